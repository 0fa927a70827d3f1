"""The compiled loops of the cap reads (``_count.pyx``: answering a plan from a household's
event log, placing the answers in the candidates' rows), or, when the install did not build
them, an error that says how to."""

try:
    from engine.caps._count import count, day_records, place
except ImportError as exc:  # an install without its compiled part
    raise ImportError(
        "engine.caps._count, the compiled loops of the cap reads, is not built: run `make "
        "setup` (or `pip install -e .`: it compiles engine/caps/_count.pyx)"
    ) from exc

__all__ = ["count", "day_records", "place"]
