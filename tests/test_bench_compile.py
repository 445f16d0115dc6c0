"""The bench's first-run figures (issue 12 item 3) are judged against their targets."""

from __future__ import annotations

from bench.targets import evaluate


def test_compile_and_first_index_figures_meet_or_miss_their_targets():
    def rows(compile_s: float, rss: float, of_later: float) -> dict:
        results = [
            {"job": "compile", "subject": "ViT-B-32", "tool": "clipsearch", "seconds": 1.0,
             "peak_rss_mb": 100.0},  # the random model (torch): not the one judged
            {"job": "compile", "subject": "ViT-B-32 (file)", "tool": "clipsearch",
             "seconds": compile_s, "peak_rss_mb": rss},
            {"job": "first-index", "subject": "phone", "tool": "clipsearch",
             "of_later_run": of_later},
        ]
        return {r["target"]: r["pass"] for r in evaluate(results, partial=False)
                if r["pass"] is not None}

    assert rows(8.0, 823.0, 0.77) == {
        "compile ViT-B-32 <= 10 s": True, "compile ViT-B-32 peak RSS <= 1.2 GB": True,
        "first index run (compile included) >= 0.7x a later run's throughput": True}
    assert not any(rows(32.3, 2510.0, 0.54).values())
