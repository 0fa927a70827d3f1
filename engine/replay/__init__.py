"""The log-replay harness: a log through the engine, measured (``admatch replay``)."""
