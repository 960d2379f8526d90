"""The benchmark's results as text tables, and the issue's targets checked against them."""
from __future__ import annotations

TARGET_THREADS = 1  # the targets are stated at 1 thread: the stable figures on shared VMs
# cnncc/torch training images/s (issue 14: 3x the paper net and LeNet, 2x ResNet-8 and DS-CNN,
# 1.5x the VGG block and resnet_small)
TRAIN_TARGETS = {"mnist_seed": 3.0, "lenet5": 3.0, "resnet8": 2.0, "ds_cnn": 2.0, "vgg_cifar": 1.5,
                 "resnet_small": 1.5}
ORT_TARGET = 1.5  # onnxruntime batch-1 latency / cnncc's (Python), every spec; the emitted C faster again
LATENCY_TARGETS = {"mnist_seed": 5.0, "lenet5": 5.0}  # torch latency / cnncc latency (Python)
COMPILE_SPEC, COLD_TARGET_S, CACHED_TARGET_S = "lenet5", 3.0, 0.050


def _table(header: list[str], rows: list[list[str]], left: int = 0) -> list[str]:
    """Columns right-aligned except the first `left`."""
    widths = [max(len(r[c]) for r in [header] + rows) for c in range(len(header))]

    def fmt(row):
        return "  ".join(cell.ljust(w) if c < left else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))

    rule = "-" * len(fmt(header))
    return [fmt(header), rule] + [fmt(r) for r in rows]


def _num(figure, key: str, fmt: str = "{:,.0f}") -> str:
    if not figure:
        return "n/a"
    if "error" in figure:
        return "error"
    return fmt.format(figure[key]) if figure.get(key) is not None else "n/a"


def _ratio(value) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _pct(figure, peak) -> str:
    if not figure or "gflops" not in figure or not isinstance(peak, float):
        return "n/a"
    return f"{100 * figure['gflops'] / peak:.1f}%"


def _spec_lines(spec: dict, peak: dict, batch: int) -> list[str]:
    lines = [f"{spec['spec']} ({spec['path'].rsplit('/', 1)[-1]}): {spec['macs']:,} forward + "
             f"{spec['backward_macs']:,} backward MACs per image = {spec['flop_per_image'] / 1e6:.2f} MFLOP "
             f"per training image; {spec['loss']}, {spec['optimizer']}"]
    check = spec.get("check")
    if check:
        if "error" in check:
            lines.append(f"  cross-check vs torch: ERROR {check['error']}")
        else:
            parts = [f"forward {check['forward_rel']:.1e}"]
            if "grad_rel" in check:
                parts += [f"loss {check['loss_rel']:.1e}", f"gradients {check['grad_rel']:.1e}"]
            elif "training" in check:
                parts.append(f"training {check['training']}")
            verdict = "OK" if check["ok"] else "MISMATCH (torch columns dropped): " + "; ".join(check["failures"])
            lines.append(f"  cross-check vs torch, same weights, batch {check['batch']}: max relative difference "
                         f"{', '.join(parts)}: {verdict}")
    if spec["train"]:
        lines += ["", f"  training step (forward + loss + backward + {spec['optimizer']}), batch {batch}, float32:"]
        rows = []
        for row in spec["train"]:
            c, t, p = row.get("cnncc"), row.get("torch"), peak.get(str(row["threads"]))
            rows.append([str(row["threads"]), _num(c, "images_per_s"), _num(t, "images_per_s"), _ratio(row["ratio"]),
                         _num(c, "gflops", "{:.2f}"), _pct(c, p), _num(t, "gflops", "{:.2f}"), _pct(t, p),
                         _num(c, "rss_mb"), _num(t, "rss_mb"), _num(row.get("portable"), "images_per_s"),
                         _ratio(row.get("portable_ratio"))])
        lines += ["  " + line for line in _table(
            ["threads", "cnncc img/s", "torch img/s", "cnncc/torch", "cnncc GFLOP/s", "% peak", "torch GFLOP/s",
             "% peak", "cnncc RSS MB", "torch RSS MB", "portable img/s", "portable/vector img/s"], rows)]
    lines += ["", "  batch-1 inference latency, median us:"]
    rows = []
    for row in spec["latency"]:
        emitted = row.get("emitted_c")
        rows.append([str(row["threads"]), _num(row.get("cnncc"), "median_us", "{:,.1f}"),
                     _num(emitted, "median_us", "{:,.1f}") if emitted else "n/a",
                     _num(row.get("torch"), "median_us", "{:,.1f}"), _ratio(row["speedup"]),
                     _num(row.get("onnxruntime"), "median_us", "{:,.1f}"), _ratio(row.get("ort_speedup")),
                     _num(row.get("portable"), "median_us", "{:,.1f}"), _ratio(row.get("portable_slowdown"))])
    lines += ["  " + line for line in _table(
        ["threads", "cnncc (Python)", "cnncc emitted C", "torch (Python)", "torch/cnncc", "onnxruntime",
         "ort/cnncc", "portable (Python)", "portable/vector us"], rows)]
    comp = spec["compile"]

    def seconds(value):
        return "n/a" if value is None else (f"{value:.2f} s" if value >= 1 else f"{1e3 * value:.0f} ms")

    lines += ["", f"  compile to a loaded module (cnncc.compile, median of {len(comp['cold'])}): cold "
                  f"{seconds(comp['cold_median_s'])}; cached {seconds(comp['cached_median_s'])} in a fresh process "
                  f"(after `import numpy` and `import cnncc`, the latter {seconds(comp['import_median_s'])}), "
                  f"{seconds(comp['same_process_median_s'])} again in the same process"]
    return lines


def render(result: dict) -> str:
    m, s, peak = result["machine"], result["settings"], result["peak_gflops"]
    peak_text = ", ".join(f"{peak[str(t)]:.1f} GFLOP/s at {t} thread{'s' if t > 1 else ''}"
                          for t in s["threads"] if str(t) in peak) or f"n/a ({peak.get('error')})"
    load = m.get("load_average_before"), m.get("load_average_after")
    lines = [f"cnncc vs PyTorch, {result['date']}{'  [--quick: smoke run, figures not meaningful]' if s['quick'] else ''}",
             f"machine: {m['cpu']} ({m.get('isa', 'ISA not recorded')}), {m['cpus']} CPUs, {m['platform']}; "
             f"{m['compiler']}",
             f"software: Python {m['python']}, numpy {m['numpy']}, cffi {m['cffi']}, "
             f"torch {m['torch'] if result['torch'] else 'n/a (not installed or --no-torch)'}",
             f"machine peak (cnncc/peak.py, float32 FMA): {peak_text}",
             f"settings: batch {s['batch']}, medians of {s['repeats']} repeats, threads "
             f"{','.join(map(str, s['threads']))}; load average (1 min) before {load[0][0] if load[0] else 'n/a'}, "
             f"after {load[1][0] if load[1] else 'n/a'}"]
    lines.append("GFLOP/s and % peak count every layer's full FLOPs (the per-image figures below); cnncc's conv "
                 "backward through a maxpool does about a quarter of its share, so its figures are effective rates")
    if m.get("OPENBLAS_CORETYPE"):
        lines.append(f"note: OPENBLAS_CORETYPE={m['OPENBLAS_CORETYPE']} is set; nothing measured here uses numpy's BLAS")
    for spec in result["specs"]:
        lines += [""] + _spec_lines(spec, peak, s["batch"])
    lines += ["", f"targets (issues 6 and 14; batch {s['batch']}; speed at every thread count measured, "
                  f"memory at {TARGET_THREADS} thread):"]
    rows = [[t["target"], t["measured"], {True: "yes", False: "NO", None: "n/a"}[t["met"]]]
            for t in result["targets"]]
    lines += ["  " + line for line in _table(["target", "measured", "met"], rows, left=2)]
    return "\n".join(lines)


def _at_threads(rows: list[dict]) -> dict | None:
    for row in rows:
        if row["threads"] == TARGET_THREADS:
            return row
    return rows[0] if rows else None


def _threads(row: dict) -> str:
    return f"{row['threads']} thread{'s' if row['threads'] != 1 else ''}"


def targets(result: dict) -> list[dict]:
    out = []

    def add(target, measured, met):
        out.append({"target": target, "measured": measured, "met": met})

    for spec in result["specs"]:
        name = spec["spec"]
        train = _at_threads(spec["train"])
        # The speed targets hold at every thread count (the issue): one row per count measured.
        for row in spec["train"] if name in TRAIN_TARGETS else []:
            goal, ratio = TRAIN_TARGETS[name], row["ratio"]
            add(f"{name} training images/s >= {goal:g}x torch, {_threads(row)}", _ratio(ratio),
                None if ratio is None else ratio >= goal)
        for row in spec["latency"] if name in LATENCY_TARGETS else []:
            goal, speedup = LATENCY_TARGETS[name], row["speedup"]
            add(f"{name} batch-1 latency >= {goal:g}x lower than torch, {_threads(row)}", _ratio(speedup),
                None if speedup is None else speedup >= goal)
        for row in spec["latency"] if result.get("onnxruntime") else []:
            speedup, emitted = row.get("ort_speedup"), row.get("ort_speedup_emitted")
            add(f"{name} batch-1 latency >= {ORT_TARGET:g}x lower than onnxruntime, {_threads(row)}",
                _ratio(speedup), None if speedup is None else speedup >= ORT_TARGET)
            if emitted is not None and speedup is not None:
                # (ort / C) / (ort / Python) = Python / C: the emitted C against the Python call
                add(f"{name} emitted C batch-1 latency lower again than Python's, {_threads(row)}",
                    _ratio(emitted / speedup), emitted > speedup)
        if name == COMPILE_SPEC:
            cold, cached = spec["compile"]["cold_median_s"], spec["compile"]["cached_median_s"]
            add(f"{name} compile cold < {COLD_TARGET_S:g} s", "n/a" if cold is None else f"{cold:.2f} s",
                None if cold is None else cold < COLD_TARGET_S)
            add(f"{name} compile cached < {1e3 * CACHED_TARGET_S:.0f} ms (fresh process)",
                "n/a" if cached is None else f"{1e3 * cached:.0f} ms",
                None if cached is None else cached < CACHED_TARGET_S)
        if train is not None:
            c, t = train.get("cnncc") or {}, train.get("torch") or {}
            if "rss_mb" in c and "rss_mb" in t:
                add(f"{name} training peak RSS <= torch's", f"{c['rss_mb']:.0f} vs {t['rss_mb']:.0f} MB",
                    c["rss_mb"] <= t["rss_mb"])
            else:
                add(f"{name} training peak RSS <= torch's", "n/a", None)
    return out
