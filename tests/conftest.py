"""Test-wide settings: CPU only, and fast compiles for the small models the tests build."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
