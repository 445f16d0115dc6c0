"""The printed summary: one line per job, then the targets with pass/fail."""

from __future__ import annotations

COLUMNS = [("job", 11), ("subject", 15), ("tool", 10), ("n", 7), ("seconds", 8),
           ("img/s", 7), ("p50 ms", 7), ("peak RSS MB", 11), ("vs baseline", 11),
           ("steal", 5)]


def _fmt(value: object, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def steal_share(result: dict, cores: int) -> float | None:
    """The share of the job's core time (its runs' wall x cores) that the VM's host took
    (bench.steal); None where it was not counted."""
    runs = [r for r in result.get("runs", []) if r.get("steal_s") is not None]
    wall = sum(r["seconds"] for r in runs) * cores
    return sum(r["steal_s"] for r in runs) / wall if runs and wall > 0 else None


def _row(result: dict, cores: int) -> list[str]:
    ratio = result.get("vs_baseline")
    stolen = steal_share(result, cores)
    return [
        result["job"], result["subject"], result["tool"], _fmt(result.get("count")),
        _fmt(result.get("seconds"), 3), _fmt(result.get("images_per_s"), 1),
        _fmt(result.get("p50_ms"), 2), _fmt(result.get("peak_rss_mb"), 0),
        f"{ratio:.2f}x" if ratio is not None else "",
        "-" if stolen is None else f"{stolen:.0%}",
    ]


def print_table(doc: dict) -> None:
    machine = doc["machine"]
    flags = ", ".join(f for f, on in machine["flags"].items() if on)
    print(f"\n{machine['cpu']}, {machine['cores']} cores, torch "
          f"{machine['packages'].get('torch')}, flags: {flags}")
    print(f"load average start {machine['load_average_at_start']}, "
          f"end {machine.get('load_average_at_end')}")
    print()
    print("  ".join(name.ljust(width) for name, width in COLUMNS))
    for result in doc["results"]:
        cells = _row(result, machine["cores"])
        print("  ".join(c.ljust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True)))
        if result.get("agreement"):
            agree = result["agreement"]
            print(f"  {'':>11}vectors vs baseline: cos same file {agree['same_file_mean_cos']}"
                  f" (min {agree['same_file_min_cos']}), other files "
                  f"{agree['other_file_mean_cos']}")
        if result.get("image"):
            image = result["image"]
            agree = image.get("agreement_int8_vs_fp32", {})
            print(f"  {'':>11}image tower: {image['backend']} ({image.get('reason')}); "
                  f"int8 vs fp32 min cos {agree.get('min_cos')}; "
                  f"measured {image.get('images_per_second')}")
        if result.get("of_later_run") is not None:
            print(f"  {'':>11}a later run (model compiled): {result['later_images_per_s']:.1f} "
                  f"img/s, {result['later_peak_rss_mb']:.0f} MB; the first reaches "
                  f"{result['of_later_run']:.2f} of it")
        if result.get("resident_mb") is not None:
            print(f"  {'':>11}resident after the queries: {result['resident_mb']:.0f} MB")
        if result.get("of_limit") is not None:
            print(f"  {'':>11}machine's limit (measured in this run): "
                  f"{result['limit_images_per_s']:.1f} img/s; clipsearch reaches "
                  f"{result['of_limit']:.2f} of it")
            if result.get("of_limit_in_turns") is not None:
                paces = "; ".join(f"{a['ms']:.1f} / {b['ms']:.1f}" for a, b in result["paces_ms"])
                print(f"  {'':>11}the same at the machine's pace when each run was made "
                      f"(one core's ms an image before / after: {paces}): "
                      f"{result['limit_in_turns_images_per_s']:.1f} img/s; clipsearch reaches "
                      f"{result['of_limit_in_turns']:.2f} of it")
            if result.get("of_limit_given") is not None:
                stolen = ", ".join("-" if r.get("steal_s") is None else f"{r['steal_s']:.2f}"
                                   for r in result["runs"])
                print(f"  {'':>11}and {result['of_limit_given']:.2f} of it on the core time "
                      f"the VM's host left the runs (steal s: {stolen}; the target's figure)")
            if result.get("of_limit_all_cores") is not None:
                print(f"  {'':>11}the same with the tower's cost sustained on every core: "
                      f"{result['limit_all_cores_images_per_s']:.1f} img/s; clipsearch "
                      f"reaches {result['of_limit_all_cores']:.2f} of it")
        if result.get("first_run_seconds") is not None:
            print(f"  {'':>11}first query after indexing (not in the p50): "
                  f"{result['first_run_seconds']:.3f} s, {result['first_run_peak_rss_mb']:.0f} MB")
    if doc.get("limit"):
        _print_limit(doc["limit"])
    print("\nseconds and peak RSS: medians over runs. 'vs baseline': speed-up (throughput "
          "ratio, or baseline time / clipsearch time). MB = 1e6 bytes. 'steal': the share of "
          "the job's core time a VM's host took (bench.steal).")
    print("\nTargets")
    for row in doc["targets"]:
        if row["pass"] is None:
            print(f"  [ -- ] {row['target']}: not run")
            continue
        mark = "PASS" if row["pass"] else "FAIL"
        note = f"  ({row['note']})" if row.get("note") else ""
        print(f"  [{mark}] {row['target']}: {row['value']:.4g} ({row['subject']}){note}")
    for note in doc["notes"]:
        print(f"note: {note}")


def _print_limit(limit: dict) -> None:
    tower = limit["tower"]
    if tower.get("device"):  # the tower on an accelerator: bench.device_tower
        print(f"\nLimit = the slower of {limit['cores']} cores x 1000 / (decode + other ms "
              f"per image) and the device; tower: {tower['runtime']}, {tower['ms']} ms an "
              f"image, min cos {tower['min_cos']} (guard {limit['guard_min_cos']}); load "
              f"average {limit['load_average_at_start']} -> {limit['load_average_at_end']}")
        for name, figures in limit["sets"].items():
            print(f"  {name}: the cores {figures['host_images_per_s']} img/s ("
                  f"{figures['decode_ms']} ({figures['decoder']}) + {figures['other_ms']} ms), "
                  f"the device {figures['device_images_per_s']} img/s -> "
                  f"{figures['limit_images_per_s']} img/s")
        return
    print(f"\nLimit = {limit['cores']} cores x 1000 / (decode + tower + other ms per image), "
          f"one core each; tower: {tower['runtime']}, {tower['ms']} ms, min cos "
          f"{tower['min_cos']} (guard {limit['guard_min_cos']}; clipsearch's variant "
          f"{tower.get('clipsearch_ms')} ms in the same loop); load average "
          f"{limit['load_average_at_start']} -> {limit['load_average_at_end']}")
    if tower.get("all_cores_ms") is not None:
        print(f"  the tower sustained on every core at once: {tower['all_cores_ms']} core-ms "
              f"an image (the second limit below; for the record, not a target)")
    for name, figures in limit["sets"].items():
        all_cores = figures.get("limit_all_cores_images_per_s")
        print(f"  {name}: {figures['decode_ms']} ({figures['decoder']}) + {figures['tower_ms']}"
              f" + {figures['other_ms']} ms -> {figures['limit_images_per_s']} img/s"
              + (f"; the tower sustained on every core: {all_cores} img/s" if all_cores else ""))
