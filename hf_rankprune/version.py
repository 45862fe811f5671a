"""The package version, written once: `hf_rankprune.__version__`, the model card and pyproject.toml (setuptools'
dynamic `attr:` reads it without importing the package) all take it from here."""

__version__ = "0.1.0"
