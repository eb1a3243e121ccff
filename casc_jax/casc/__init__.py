"""The CASC system (paper 1) and its baselines (DeepJSCC, DiffSC)."""
