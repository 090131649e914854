"""crashcart's benchmark harness (issue 7): `sudo .venv/bin/python -m bench`."""
