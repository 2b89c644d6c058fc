# A broken release for the gunicorn soak test: copied to app.py, it raises at import. gunicorn's master sends READY=1
# before its sync workers import the app (no --preload); the workers then fail to boot and the master exits 3.
raise RuntimeError("broken release: fails at import (test)")
