"""Speed of llama.cpp CPU builds: the portable AVX2 build the project installs vs an AVX-512 build.

Measures the llama-cpp-python build installed in the venv ("portable": the defines in
pyproject.toml's ``[tool.uv.config-settings-package]``: AVX2 + FMA + F16C + BMI2, no AVX-512, no
AMX) against comparison builds compiled here from the same sdist with the same defines plus the
AVX-512 ones this CPU supports (AVX512, and AVX512_VNNI / _VBMI / _BF16 if /proc/cpuinfo lists
them; AMX always off). A comparison build goes to bench/out/builds/<variant>/ (sdist via
``pip download``, wheel via ``uv build``, installed with ``uv pip install --target``) and is reused
on the next run if its version and defines match; the compile time is printed. On a CPU without
avx512f the comparison is skipped: that binary would die with SIGILL.

Each build runs in its own child process (PYTHONPATH = the variant's install dir) on the project's
GGUF (tools.models.local_llm.assemble_packaged_gguf) with n_threads = n_threads_batch = 2, n_ctx 2048,
n_batch 256:
  * prompt tok/s: a fixed 512-token prompt is evaluated once untimed (warm-up), then
    ``llm.reset()`` + ``llm.eval(tokens)`` is timed (empty KV cache, 2 batches of 256);
  * generation tok/s: a chat prompt asking for a long answer is evaluated (not timed), then 64
    tokens are decoded one at a time: greedy ``llm.sample(temp=0)`` (not timed) and
    ``llm.eval([token])`` (timed); tok/s = 64 / summed eval time, i.e. pure decode speed.
Each child does --repeat timed runs of both; --rounds children per build run in alternating order
(A B, B A, ...) so a change in machine load hits all builds alike; the table shows the median over
all runs of a build. The greedy texts of the builds are compared (they should agree, or nearly).
Also reports whether each build's libggml-cpu.so contains AMX (``tilezero``) and AVX-512 (``%zmm``)
instructions (objdump -d) and the CPU features llama.cpp says it was built with. Timings are
wall-clock; on a shared machine each child prints how many CPUs other processes used meanwhile,
and one where they used more than 0.2 CPU is discarded and retried after 30 s (--attempts).

    uv run python bench/cpu_builds.py [--variants avx512] [--repeat 3] [--rounds 2] [--rebuild] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
import tomllib
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from bench.common import format_table, machine_load  # noqa: E402
from tools.models.local_llm import assemble_packaged_gguf  # noqa: E402

OUT = ROOT / "bench" / "out" / "builds"
MAX_OTHERS = 0.2  # CPUs other processes may use during a child's run before it is discarded and retried
# variant -> (required cpu flag, {define: cpu flag that must be present for it to be ON})
VARIANTS = {
    "avx512": ("avx512f", {"GGML_AVX512": "avx512f", "GGML_AVX512_VNNI": "avx512_vnni",
                           "GGML_AVX512_VBMI": "avx512vbmi", "GGML_AVX512_BF16": "avx512_bf16"}),
}

CHILD = r'''
import json, re, sys, time
from pathlib import Path
import llama_cpp
cfg = json.loads(sys.argv[1])
llm = llama_cpp.Llama(cfg["model"], n_threads=2, n_threads_batch=2, n_ctx=2048, n_batch=256, verbose=False)
text = " ".join(f"Ticket {i}: a customer from city number {i * 7} reports that invoice {i * 131} was charged "
                f"twice and asks for a refund of {i * 3} dollars." for i in range(200))
prompt = llm.tokenize(text.encode(), add_bos=True)[: cfg["prompt_tokens"]]
assert len(prompt) == cfg["prompt_tokens"], len(prompt)
llm.eval(prompt)  # warm-up, not timed: page in the weights, size the compute buffers
pp = []
for _ in range(cfg["repeat"]):
    llm.reset()
    t = time.perf_counter()
    llm.eval(prompt)
    pp.append(len(prompt) / (time.perf_counter() - t))
chat = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nExplain in detail, "
        "step by step, how a customer support team should handle a double-charged invoice, "
        "with examples.<|im_end|>\n<|im_start|>assistant\n")
chat_tokens = llm.tokenize(chat.encode(), add_bos=False, special=True)
tg = []
for _ in range(cfg["repeat"]):
    llm.reset()
    llm.eval(chat_tokens)
    out, spent = [], 0.0
    for _ in range(cfg["gen_tokens"]):
        tok = llm.sample(temp=0.0)
        out.append(tok)
        t = time.perf_counter()
        llm.eval([tok])
        spent += time.perf_counter() - t
    tg.append(len(out) / spent)
info = llama_cpp.llama_print_system_info().decode()
print(json.dumps({"prompt_runs": pp, "gen_runs": tg, "text": llm.detokenize(out).decode(errors="replace"),
                  "features": sorted(set(re.findall(r"(\w+) = 1", info))),
                  "package_dir": str(Path(llama_cpp.__file__).parent)}))
'''


def cpu_flags() -> set[str]:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    return next((set(ln.split(":", 1)[1].split()) for ln in lines if ln.startswith("flags")), set())


def portable_defines() -> dict[str, str]:
    """The cmake defines pyproject.toml passes when uv builds llama-cpp-python for the venv."""
    uv = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]
    settings = uv["config-settings-package"]["llama-cpp-python"]
    return {k.removeprefix("cmake.define."): v for k, v in settings.items() if k.startswith("cmake.define.")}


def fetch_sdist(ver: str) -> Path:
    src = OUT / "src"
    found = sorted(src.glob(f"llama*cpp*python-{ver}.tar.gz"))
    if not found:
        subprocess.run([shutil.which("pip") or "pip3", "download", "--no-deps", "--no-binary", ":all:", f"llama-cpp-python=={ver}",
                        "-d", str(src)], check=True)
        found = sorted(src.glob(f"llama*cpp*python-{ver}.tar.gz"))
    return found[0]


def build_variant(name: str, defines: dict[str, str], ver: str, rebuild: bool) -> dict:
    """Build and install one comparison variant, or reuse the one from an earlier run."""
    root = OUT / name
    site, meta_path = root / "site", root / "build.json"
    if not rebuild and meta_path.is_file() and (site / "llama_cpp").is_dir():
        meta = json.loads(meta_path.read_text())
        if meta["version"] == ver and meta["defines"] == defines:
            print(f"{name}: reusing {site} (compiled in {meta['compile_s']:.0f} s on an earlier run)")
            return meta | {"reused": True}
    sdist = fetch_sdist(ver)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    cmd = ["uv", "build", "--no-config", "--python", sys.executable, "--wheel", "--out-dir", str(root / "wheel"),
           *(f"--config-setting=cmake.define.{k}={v}" for k, v in defines.items()), str(sdist)]
    print(f"{name}: compiling ({root / 'build.log'})\n  {' '.join(cmd)}", flush=True)
    started, cpu0 = time.monotonic(), children_cpu_s()
    with open(root / "build.log", "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
    compile_s, compile_cpu_s = time.monotonic() - started, children_cpu_s() - cpu0
    wheel = next((root / "wheel").glob("*.whl"))
    subprocess.run(["uv", "pip", "install", "--no-config", "--python", sys.executable, "--no-deps",
                    "--target", str(site), str(wheel)], check=True)
    print(f"{name}: compiled in {compile_s:.0f} s ({compile_s / 60:.1f} min), {compile_cpu_s:.0f} CPU-seconds")
    meta = {"version": ver, "defines": defines, "compile_s": compile_s, "compile_cpu_s": compile_cpu_s,
            "wheel": wheel.name}
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta | {"reused": False}


def instructions(package_dir: str) -> dict[str, int]:
    lib = next(p for p in sorted(Path(package_dir).rglob("libggml-cpu*.so*")) if not p.is_symlink())
    lines = subprocess.run(["objdump", "-d", str(lib)], capture_output=True, text=True, check=True).stdout.splitlines()
    return {"amx": sum("tilezero" in ln for ln in lines), "avx512": sum("%zmm" in ln for ln in lines)}


def busy_cpu_s() -> float:
    """CPU seconds all processes have used since boot (/proc/stat, every state but idle and iowait)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(name: str, site: Path | None, model: Path, args: argparse.Namespace) -> dict | None:
    """One child process: ``args.repeat`` timed prompt runs and generation runs of one build."""
    cfg = {"model": str(model), "prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens,
           "repeat": args.repeat}
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = str(site)
    busy0, own0, t0 = busy_cpu_s(), children_cpu_s(), time.monotonic()
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    others = (busy_cpu_s() - busy0 - (children_cpu_s() - own0)) / (time.monotonic() - t0)
    if proc.returncode != 0:
        print(f"{name}: child exited with {proc.returncode} (-4 = SIGILL)\n{proc.stderr[-2000:]}")
        return None
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{name:<22} prompt {[round(x, 1) for x in res['prompt_runs']]} tok/s, "
          f"generation {[round(x, 2) for x in res['gen_runs']]} tok/s (other processes: {others:.2f} CPUs)", flush=True)
    return res | {"others_cpus": others}


def pct(new: float, base: float, what: str) -> str:
    d = (new / base - 1) * 100
    return f"{abs(d):.1f}% {'faster' if d >= 0 else 'slower'} at {what}"


def main(args: argparse.Namespace) -> dict:
    ver = version("llama-cpp-python")
    flags = cpu_flags()
    model = assemble_packaged_gguf(Path.home() / ".cache" / "switchboard" / "models", progress=False)
    print(f"llama-cpp-python {ver}, model {model.name}, {machine_load()}")
    print(f"CPU avx512 flags: {' '.join(sorted(f for f in flags if f.startswith('avx512'))) or 'none'}; "
          f"amx: {' '.join(sorted(f for f in flags if f.startswith('amx'))) or 'none'}")
    base = portable_defines()
    builds: list[tuple[str, Path | None, dict]] = [("portable (installed)", None, {"compile_s": None})]
    for name in args.variants:
        needed, extra = VARIANTS[name]
        if needed not in flags:
            print(f"{name}: SKIPPED, this CPU lacks {needed}: a build for it would die with SIGILL here")
            continue
        defines = base | {d: "ON" if flag in flags else "OFF" for d, flag in extra.items()}
        builds.append((name, OUT / name / "site", build_variant(name, defines, ver, args.rebuild)))
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in builds}
    for rnd in range(args.rounds):  # alternate the order so a change in machine load hits every build alike
        for name, site, _ in builds if rnd % 2 == 0 else builds[::-1]:
            for attempt in range(1, args.attempts + 1):  # a busy machine wrecks the figures: wait and retry
                res = measure(name, site, model, args)
                if res is None or res["others_cpus"] <= MAX_OTHERS or attempt == args.attempts:
                    break
                print(f"  discarded: other processes were busy; retry {attempt}/{args.attempts - 1} in 30 s", flush=True)
                time.sleep(30)
            if res is not None:
                runs[name].append(res)
    rows, results = [], {}
    for name, _, meta in builds:
        if not runs[name]:
            continue
        res = runs[name][0] | {k: [x for r in runs[name] for x in r[k]] for k in ("prompt_runs", "gen_runs")}
        res |= {"others_cpus": [r["others_cpus"] for r in runs[name]], "instr": instructions(res["package_dir"])}
        res["prompt_tps"], res["gen_tps"] = statistics.median(res["prompt_runs"]), statistics.median(res["gen_runs"])
        print(f"{name}: loaded from {res['package_dir']}\n  built with: {' '.join(res['features'])}")
        results[name] = res | {"build": meta}
        cs = meta.get("compile_s")
        rows.append([name, "-" if cs is None else f"{cs:.0f} s" + (" (earlier)" if meta.get("reused") else ""), f"{res['prompt_tps']:.1f}", f"{res['gen_tps']:.2f}",
                     f"{'yes' if res['instr']['amx'] > 0 else 'no'} ({res['instr']['amx']})",
                     f"{'yes' if res['instr']['avx512'] > 0 else 'no'} ({res['instr']['avx512']})"])
    print()
    print(format_table(["build", "compile", "prompt tok/s", "gen tok/s", "AMX instr (tilezero)",
                        "AVX-512 instr (zmm lines)"], rows))
    ref = results.get("portable (installed)")
    for name, res in results.items():
        if ref is None or res is ref:
            continue
        same = "same greedy text" if res["text"] == ref["text"] else "greedy text DIFFERS from portable"
        print(f"{name} vs portable: {pct(res['prompt_tps'], ref['prompt_tps'], 'prompt')}, "
              f"{pct(res['gen_tps'], ref['gen_tps'], 'generation')} ({same})")
    print(machine_load())
    if (busy := max((r["others_cpus"] for rs in runs.values() for r in rs), default=0)) > MAX_OTHERS:
        print(f"WARNING: other processes used up to {busy:.2f} of the {os.cpu_count()} CPUs during a run: the tok/s "
              "figures are unreliable (llama.cpp's threads spin-wait for each other when CPUs are oversubscribed)")
    return {"version": ver, "model": str(model), "results": results}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="*", default=["avx512"], choices=sorted(VARIANTS))
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per child process")
    ap.add_argument("--rounds", type=int, default=2, help="child processes per build, in alternating order")
    ap.add_argument("--attempts", type=int, default=4, help="tries per child while other processes are busy")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--rebuild", action="store_true", help="recompile comparison builds even if installed")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    out = main(a := ap.parse_args())
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {a.json}")
