"""The multi-task paper's baselines (section V): DeepJSCC, ADJSCC, WITT, Deeplab-JSCC, and the separated
JPEG + LDPC + QAM (+ FCN) scheme, at our system's communication budget (see `common` and
`multitask_jax.digital.budget`), trained by `multitask_jax.train`'s loop. `models.build_model(config)` builds one."""
