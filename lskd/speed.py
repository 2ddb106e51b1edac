"""How fast an engine translates and how much memory it needs: the numbers ``lskd-eval speed`` records.

One measurement runs in one process that holds one engine (``lskd-eval speed`` starts a process
per engine and thread count, so that engines do not share memory or warm caches): a short warm-up,
the whole split in the engine's batches (throughput), then sentences one at a time (latency), and
the process's peak resident set size.
"""
from __future__ import annotations

import math
import resource
import time
from typing import Any, Sequence

from lskd.decoding import Hypothesis, TranslationEngine

#: sentences translated before timing starts (first calls allocate buffers, fill caches)
WARMUP_SENTENCES = 8
MEASUREMENT = ("throughput: wall time of the engine's translate call over the whole split in its batches, after "
               f"a warm-up of {WARMUP_SENTENCES} sentences, model loading excluded; latency: the same call on one "
               "sentence at a time, over sentences evenly spaced through the split; peak memory: the peak resident set "
               "size (VmHWM) of the process that loaded this one engine and translated, read at its end")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear interpolation between closest ranks (``numpy.percentile``'s default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def evenly_spaced(total: int, count: int) -> list[int]:
    """``count`` ids spread over ``range(total)`` (all of them when ``count >= total``)."""
    if count >= total:
        return list(range(total))
    return [round(k * (total - 1) / (count - 1)) if count > 1 else 0 for k in range(count)]


def peak_resident_mb() -> float:
    """This process's peak resident set size so far, in MiB: Linux's ``VmHWM`` (``/proc/self/status``).

    Not ``ru_maxrss``: Linux carries a process's peak across ``exec``, so a measuring process started
    from a parent holding torch would report the parent's peak. Elsewhere ``ru_maxrss`` (KiB) it is.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(engine: TranslationEngine, ids: Sequence[int], source_words: Sequence[int],
            latency_sentences: int) -> tuple[dict[str, Any], dict[int, list[Hypothesis]]]:
    """Throughput over ``ids`` and single-sentence latency; returns the numbers and the hypotheses.

    ``source_words[i]``: words (whitespace tokens) of the raw source of sentence ``i``.
    """
    engine.translate(list(ids)[:WARMUP_SENTENCES])
    began = time.perf_counter()
    hypotheses = engine.translate(ids)
    seconds = time.perf_counter() - began
    latencies = []
    for i in [ids[k] for k in evenly_spaced(len(ids), latency_sentences)]:
        began = time.perf_counter()
        engine.translate([i])
        latencies.append(time.perf_counter() - began)
    words = sum(source_words[i] for i in ids)
    numbers = {
        "sentences": len(ids), "source_words": words, "seconds": round(seconds, 3),
        "words_per_second": round(words / seconds, 1), "sentences_per_second": round(len(ids) / seconds, 2),
        "latency_ms": {"sentences": len(latencies), "p50": round(1000 * percentile(latencies, 50), 1),
                       "p90": round(1000 * percentile(latencies, 90), 1)},
        "peak_resident_mb": round(peak_resident_mb(), 1),
    }
    return numbers, hypotheses
