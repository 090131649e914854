"""The issue's targets, checked against a run's results, and the tables (Markdown)."""

from __future__ import annotations

from typing import Any

TARGET_MS = 40.0
TARGET_RATIO_DOCKER = 0.5
TARGET_RATIO_PODMAN = 0.2
TARGET_P3_WALL_S = 5.0
TARGET_RSS_MB = 25.0


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _range(s: dict[str, float], digits: int = 1) -> str:
    if not s.get("n"):
        return "-"
    return f"{s['min']:.{digits}f}-{s['max']:.{digits}f}"


def _busy(phase: dict[str, Any]) -> str:
    m = phase.get("machine")
    if not m:
        return "machine load not recorded"
    return (
        f"machine {m['machine_busy_pct']:.0f}% busy; {m['others_pct']:.0f}% of all cores not "
        "in the measured commands (other users' work, and the daemons serving the execs)"
    )


def _target(name: str, value: str, target: str, met: bool | None) -> dict[str, Any]:
    return {"target": name, "value": value, "goal": target, "met": met}


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    p1 = res.get("p1")
    if p1:
        cases, ratios = p1["cases"], p1["ratios"]
        for key, c in cases.items():
            if (
                c["kind"] == "crashcart"
                and key != "crashcart/docker-nopyc"
                and c["wall_ms"].get("n")
            ):
                med = c["wall_ms"]["median"]
                out.append(
                    _target(
                        f"P1 {c['label']} median",
                        f"{med:.1f} ms",
                        f"<= {TARGET_MS:.0f} ms",
                        med <= TARGET_MS,
                    )
                )
        for pair, goal in (
            ("crashcart/docker / docker-exec", TARGET_RATIO_DOCKER),
            ("crashcart/podman / podman-exec", TARGET_RATIO_PODMAN),
        ):
            r = ratios.get(pair)
            if r and r.get("n"):
                out.append(
                    _target(
                        f"P1 {pair}",
                        f"{r['of_medians']:.2f}x",
                        f"<= {goal}x",
                        r["of_medians"] <= goal,
                    )
                )
    for rt in (res.get("p3") or {}).get("runtimes", []):
        if "error" in rt:
            out.append(_target(f"P3 {rt['runtime']}", rt["error"][:80], "runs", False))
            continue
        for batch, leak_key in (
            ("session", "session_leaks"),
            ("mount", None),
            ("unmount", "sideload_leaks"),
        ):
            b = rt[batch]
            ok = b["succeeded"] == b["count"]
            if batch == "mount":  # exit 0 is not enough: the toolbox must be there
                ok = ok and b.get("toolbox_mounted") == b["count"]
            leaks = rt[leak_key]["leaks"] if leak_key else 0
            met = ok and b["wall_s"] <= TARGET_P3_WALL_S and leaks == 0
            flag = {"session": "-- true", "mount": "-m", "unmount": "-u"}[batch]
            value = f"{b['succeeded']}/{b['count']} in {b['wall_s']:.2f} s"
            if batch == "mount":
                value += f", {b.get('toolbox_mounted')} mounted"
            if leak_key:
                value += f", {leaks} leaks"
            if batch != "session" and rt.get("foreign_cleanups"):
                value += " (disturbed: another user's crashcart cleanup ran)"
            out.append(
                _target(
                    f"P3 {rt['runtime']} {b['count']} x {flag}",
                    value,
                    f"all, <= {TARGET_P3_WALL_S:.0f} s, 0 leaks",
                    met,
                )
            )
    p5 = res.get("p5")
    if p5 and p5.get("maxrss_mb") is not None:
        out.append(
            _target(
                "P5 crashcart peak RSS",
                f"{p5['maxrss_mb']:.1f} MB",
                f"<= {TARGET_RSS_MB:.0f} MB",
                p5["maxrss_mb"] <= TARGET_RSS_MB,
            )
        )
    return out


def p5(res: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS from the P5 phase (GNU time), CPU per attach from P1 (wait4 of the whole tree:
    crashcart, its session supervisor, the command) and P3 (per process, under contention)."""
    out: dict[str, Any] = {"by_case": {}, "maxrss_mb": None}
    raw = (res.get("p5_raw") or {}).get("cases", {})
    cpu = {k: c for k, c in (res.get("p1") or {}).get("cases", {}).items()}
    rss = []
    for key, c in raw.items():
        if not c["maxrss_kb"].get("n"):
            continue
        row = {
            "label": c["label"],
            "maxrss_mb_median": c["maxrss_kb"]["median"] / 1024,
            "maxrss_mb_max": c["maxrss_kb"]["max"] / 1024,
            "cpu_ms_median": c["cpu_ms"]["median"],
            "cpu_source": "GNU time (10 ms resolution)",
        }
        p1c = cpu.get(key)
        if p1c and p1c["cpu_ms"].get("n"):
            row.update(
                cpu_ms_median=p1c["cpu_ms"]["median"],
                user_ms_median=p1c["user_ms"]["median"],
                sys_ms_median=p1c["sys_ms"]["median"],
                cpu_source="P1 wait4",
            )
        out["by_case"][key] = row
        if c["kind"] == "crashcart":
            rss.append(c["maxrss_kb"]["max"])
    for rt in (res.get("p3") or {}).get("runtimes", []):
        for batch in ("session", "mount", "unmount"):
            b = rt.get(batch)
            if b and b["cpu_ms"].get("n"):
                out["by_case"][f"p3/{rt['runtime']}/{batch}"] = {
                    "label": f"P3 {rt['runtime']} {batch}, {b['count']} at once",
                    "cpu_ms_median": b["cpu_ms"]["median"],
                    "cpu_source": "P3 wait4",
                }
    out["maxrss_mb"] = max(rss) / 1024 if rss else None
    return out


def tables(res: dict[str, Any]) -> str:
    lines: list[str] = []
    m = res["machine"]
    lines.append(
        f"{res['date']} - {m['cores']} cores ({m['cpu']}), kernel {m['kernel']}, "
        f"load average {m['loadavg_start']} at start, {m.get('loadavg_end')} at end"
    )
    lines.append(
        f"toolbox {res['toolbox']['path']} ({res['toolbox']['format']}, "
        f"{res['toolbox']['bytes'] / 1e6:.0f} MB); crashcart {res['crashcart']['path']} "
        f"-> {res['crashcart']['interpreter']} {res['crashcart']['python']}"
    )
    lines.append(f"command: {res['command']}")
    p1 = res.get("p1")
    if p1:
        lines += [
            "",
            f"P1 attach + true ({res['params']['runs']} interleaved runs, "
            f"{res['params']['warmup']} warm-up; baselines on busybox containers; "
            f"{_busy(p1)})",
            "",
            "| command | target container | median ms | p95 ms | min-max ms | CPU ms | fail |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for c in p1["cases"].values():
            w = c["wall_ms"]
            ct = c["container"]
            where = f"{ct['runtime']} {ct['image']}" if ct else "-"
            lines.append(
                f"| {c['label']} | {where} | {_fmt(w.get('median'))} | {_fmt(w.get('p95'))} | "
                f"{_range(w)} | {_fmt(c['cpu_ms'].get('median'))} | {c['failures']}/{c['runs']} |"
            )
        lines += [
            "",
            "| ratio (same iterations) | of medians | paired median | paired p5-p95 |",
            "|---|---:|---:|---:|",
        ]
        for pair, r in p1["ratios"].items():
            if r.get("n"):
                lines.append(
                    f"| {pair} | {r['of_medians']:.2f} | {r['paired_median']:.2f} | "
                    f"{r['paired_p5']:.2f}-{r['paired_p95']:.2f} |"
                )
    p2 = res.get("p2")
    if p2:
        lines += [
            "",
            f"P2 launch to first prompt through a pty ({res['params']['p2_runs']} "
            f"interleaved runs; {_busy(p2)})",
            "",
            "| command | container | prompt median ms | p95 | min-max | prompt+exit median "
            "| fail |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for c in p2["cases"].values():
            w = c["prompt_ms"]
            lines.append(
                f"| {c['label']} | {c['container']['runtime']} {c['container']['image']} | "
                f"{_fmt(w.get('median'))} | {_fmt(w.get('p95'))} | {_range(w)} | "
                f"{_fmt(c['exit_ms'].get('median'))} | {c['failures']}/{c['runs']} |"
            )
        for pair, r in p2["ratios"].items():
            if r.get("n"):
                lines.append(f"\n{pair}: {r['of_medians']:.2f} (ratio of medians)")
    p3 = res.get("p3")
    if p3:
        lines += [
            "",
            "P3 scale (distroless containers, all commands started at once)",
            "",
            "| runtime | batch | ok | wall s | per-process median / p95 ms | CPU total s | "
            "others' CPU | leaks |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for rt in p3["runtimes"]:
            if "error" in rt:
                lines.append(f"| {rt['runtime']} | error: {rt['error'][:100]} | | | | | | |")
                continue
            for batch, label, leak_key in (
                ("session", "`crashcart N -- true`", "session_leaks"),
                ("mount", "`crashcart -m N`", None),
                ("unmount", "`crashcart -u N`", "sideload_leaks"),
            ):
                b = rt[batch]
                pp = b["per_process_ms"]
                leaks = str(rt[leak_key]["leaks"]) if leak_key else "-"
                if batch == "mount":
                    leaks = f"{b.get('toolbox_mounted', '?')} mounted"
                    if rt.get("foreign_cleanups"):
                        leaks += " (foreign cleanup ran)"
                lines.append(
                    f"| {rt['runtime']} | {label} | {b['succeeded']}/{b['count']} | "
                    f"{b['wall_s']:.2f} | {_fmt(pp.get('median'), 0)} / {_fmt(pp.get('p95'), 0)}"
                    f" | {b['cpu_total_s']:.1f} | {b['machine']['others_pct']:.0f}% | {leaks} |"
                )
            seq, pre = rt["sequential_attach_ms"], rt.get("sequential_attach_prefixed_ms", {})
            lines.append(
                f"| {rt['runtime']} | one attach at a time among {rt['containers']}: "
                f"`crashcart NAME` / `crashcart {rt['runtime']}://NAME` | | | "
                f"{_fmt(seq.get('median'), 0)} / {_fmt(pre.get('median'), 0)} (medians of "
                f"{seq.get('n')}) | | | |"
            )
        for rt in p3["runtimes"]:
            if rt.get("foreign_cleanups"):
                lines.append(
                    f"\n{rt['runtime']}: another user's crashcart ran during -m/-u and may have "
                    f"removed our toolboxes: {rt['foreign_cleanups'][:3]}"
                )
            msgs = (rt.get("unmount") or {}).get("stderr_lines")
            if msgs and rt.get("sideload_leaks", {}).get("leaks"):
                lines.append(
                    f"\n{rt['runtime']} `-u` said: {msgs}; mountinfo bytes "
                    f"{rt['sideload_leaks'].get('mountinfo_bytes')}"
                )
    p5 = res.get("p5")
    if p5 and p5.get("by_case"):
        runs = f"{res['params']['p5_runs']} runs" if res.get("p5_raw") else "not run"
        lines += [
            "",
            f"P5 footprint: peak RSS of the process tree under GNU time ({runs}); "
            "CPU per run from P1/P3 (wait4)",
            "",
            "| command | peak RSS MB (median / max) | CPU ms median (user + sys) |",
            "|---|---:|---:|",
        ]
        for c in p5["by_case"].values():
            us = (
                f" ({c['user_ms_median']:.1f} + {c['sys_ms_median']:.1f})"
                if "user_ms_median" in c
                else ""
            )
            rss = (
                f"{c['maxrss_mb_median']:.1f} / {c['maxrss_mb_max']:.1f}"
                if "maxrss_mb_median" in c
                else "-"
            )
            lines.append(f"| {c['label']} | {rss} | {c['cpu_ms_median']:.1f}{us} |")
    tg = res.get("targets")
    if tg:
        lines += [
            "",
            "Targets (issue 7)",
            "",
            "| target | value | goal | met |",
            "|---|---|---|---|",
        ]
        for t in tg:
            met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
            lines.append(f"| {t['target']} | {t['value']} | {t['goal']} | {met} |")
    return "\n".join(lines)
