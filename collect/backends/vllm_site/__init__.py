"""Start-up hook for vLLM-CPU engine processes (its directory goes on their PYTHONPATH; see sitecustomize.py)."""
