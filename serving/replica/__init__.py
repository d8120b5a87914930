"""The replica server: one model behind an OpenAI-compatible HTTP API, in its own process.

Owns `python -m serving.replica --model DIR ...` (server.py: flags, socket, loading,
ready line, drain), the Starlette app (app.py), request validation (validation.py), the
completion/chat handlers (generate.py), OpenAI wire formats (openai_format.py), shared
state and sinks (state.py) and Prometheus metrics (metrics.py). It imports the engine
and never Django: a worker supervises it as a plain subprocess.
"""
