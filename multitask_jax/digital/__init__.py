"""Separated digital baseline: JPEG source coding + 5G NR LDPC + Gray QAM, and the bit budget.

budget   how channel uses and bits are counted (analog JSCC vs digital), the paper's 20 Kbit bound
qam      Gray QPSK/16QAM/64QAM, exact and max-log LLR demapping over casc_jax.channel
ldpc     5G NR base graphs, lifting, encoder, rate matching (3GPP TS 38.212)
decoder  jitted, batched normalised/offset min-sum belief propagation
jpeg     JPEG at the highest quality that fits the budget
link     image -> JPEG -> LDPC -> QAM -> channel -> decode, with failure flags
bench    throughput and BLER waterfall script
"""
