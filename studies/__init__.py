"""The study scripts: python -m studies.<name> (or python studies/<name>.py in a checkout), see docs/studies.md."""
