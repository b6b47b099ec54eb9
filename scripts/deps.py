#!/usr/bin/env python3
"""The locked dependency set: resolve it, install it, check it, upgrade it.

    python scripts/deps.py install PYTHON  the lock into PYTHON's environment (make install)
    python scripts/deps.py check           the lock still agrees with pyproject.toml (CI)
    python scripts/deps.py lock            re-resolve pyproject.toml into requirements/ (make lock)
    python scripts/deps.py upgrade         newest versions allowed, installed and tested; the new
                                           lock is kept only when `make test` passes (make upgrade)

The lock is two pip requirement files with a SHA-256 for every file pip may fetch:
``requirements/lock.txt`` (everything from PyPI) and ``requirements/torch-cpu.txt`` (the CPU
build of PyTorch, from PyTorch's CPU index: PyPI's Linux wheel of the same version is the
multi-GB CUDA build). They are written by uv (``uv pip compile``) for the one platform the
project supports here: Linux x86-64, CPython 3.11. Installs use plain pip with
``--require-hashes --no-deps``, so they take exactly the locked files and never resolve.

Install and check need only the standard library (and ``packaging`` for ``check``, which every
pip venv carries), so a bare ``python3`` can install the lock into a fresh venv.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements" / "lock.txt"
TORCH_LOCK = ROOT / "requirements" / "torch-cpu.txt"
EXTRAS = ("dev",)  # the optional dependency groups the lock includes
PLATFORM = "x86_64-manylinux_2_35"  # nvidia-pytriton 0.7.0 has manylinux_2_35 wheels only
PYTHON_VERSION = "3.11"
TORCH_INDEX = "https://download.pytorch.org/whl/{variant}"
DIGEST_LINE = "# inputs-sha256: "
# constraints of the resolution that are not the project's own requirements, with the reason
CONSTRAINTS = {
    # uv ignores upper bounds of Requires-Python; 1.3.1 declares <3.11 (ai-edge-litert needs it)
    "backports-strenum<1.3": "Requires-Python <3.11",
}
# never uninstalled by a sync: the installer itself and the project
KEEP = {"pip", "setuptools", "wheel", "mouthmap"}


class DepsError(Exception):
    """A lock or install problem, reported as one line."""


# --- what the lock is made from --------------------------------------------------------------


def _project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["project"]


def direct_requirements() -> list[str]:
    """The project's dependencies plus the locked extras, as written in pyproject.toml."""
    project = _project()
    reqs = list(project["dependencies"])
    for extra in EXTRAS:
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    return reqs


def torch_version() -> str:
    """The exact torch version pyproject.toml pins (``torch==X``)."""
    for req in _project()["dependencies"]:
        if m := re.fullmatch(r"torch\s*==\s*([0-9][0-9.]*)", req.split(";")[0].strip()):
            return m.group(1)
    raise DepsError("pyproject.toml must pin torch exactly (torch==X.Y.Z)")


def inputs_digest() -> str:
    """A digest of everything the lock is resolved from: it changes when pyproject.toml's
    dependency lists (or the lock's platform) do, and nothing else does."""
    project = _project()
    inputs = {
        "requires-python": project.get("requires-python"),
        "dependencies": project["dependencies"],
        "extras": {e: project.get("optional-dependencies", {}).get(e, []) for e in EXTRAS},
        "constraints": sorted(CONSTRAINTS),
        "platform": PLATFORM,
        "python": PYTHON_VERSION,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


# --- reading a lock --------------------------------------------------------------------------


def parse_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """``{normalised name: (version, [sha256, ...])}`` of a requirements file pip wrote."""
    text = path.read_text().replace("\\\n", " ")
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        m = re.match(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==(\S+)", line)
        if not m:
            raise DepsError(f"{path.name}: not an exact pin: {line[:80]}")
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
        pins[normalise(m.group(1))] = (m.group(3), hashes)
    return pins


def dependents(path: Path) -> dict[str, set[str]]:
    """``{name: {packages that need it}}`` from uv's ``# via`` notes (``mouthmap`` for a
    requirement of pyproject.toml itself)."""
    via: dict[str, set[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        if m := re.match(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==", line):
            current = normalise(m.group(1))
            via[current] = set()
        elif (
            current
            and (m := re.match(r"\s+#\s+(?:via\s+)?([A-Za-z0-9_.\-]+)", line))
            and m.group(1) != "via"
        ):
            via[current].add(normalise(m.group(1)))
    return via


def groups() -> dict[str, dict[str, list[str]]]:
    """``[tool.mouthmap.deps-groups]`` of pyproject.toml: the part of the lock each image
    installs, as ``{only = [...]}`` or ``{exclude = [...]}`` of the project's dependencies."""
    tool = tomllib.loads(PYPROJECT.read_text()).get("tool", {}).get("mouthmap", {})
    return {"runtime": {"exclude": []}, **tool.get("deps-groups", {})}


def subset(group: str) -> set[str]:
    """The locked packages a group needs (its roots and everything they need in turn):
    ``runtime`` is the project's dependencies without the dev tools."""
    spec = groups().get(group)
    if spec is None:
        raise DepsError(f"no dependency group {group!r}: use one of {sorted(groups())}")
    name = lambda req: normalise(re.match(r"[A-Za-z0-9_.\-]+", req).group(0))  # noqa: E731
    # `exclude` also cuts what only an excluded package needs, and the extras uv's notes do not
    # tell apart (tritonclient's HTTP client beside its gRPC one, say)
    excluded = {name(r) for r in spec.get("exclude", [])}
    roots = spec["only"] if "only" in spec else _project()["dependencies"]
    needed = {name(r) for r in roots} - excluded
    needed.add("setuptools")  # the project's build backend (installs without build isolation)
    via = dependents(LOCK) | {"torch": set()}
    grew = True
    while grew:
        extra = {
            name for name, parents in via.items()
            if name not in needed and name not in excluded and parents & needed
        }  # fmt: skip
        needed |= extra
        grew = bool(extra)
    return needed


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def recorded_digest(path: Path = LOCK) -> str | None:
    for line in path.read_text().splitlines():
        if line.startswith(DIGEST_LINE):
            return line[len(DIGEST_LINE) :].strip()
    return None


def check() -> list[str]:
    """Every way the lock disagrees with pyproject.toml, as sentences (empty: they agree)."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    problems = check_files_only()
    if any("missing" in p for p in problems):
        return problems
    pins = parse_lock(LOCK) | parse_lock(TORCH_LOCK)
    for name, (version, hashes) in pins.items():
        if not hashes:
            problems.append(f"{name}=={version} has no hash")
    for text in direct_requirements():
        req = Requirement(text)
        if req.marker and not req.marker.evaluate({"python_version": PYTHON_VERSION}):
            continue
        got = pins.get(normalise(req.name))
        if got is None:
            problems.append(f"{req.name} (pyproject.toml) is not in the lock")
        elif not req.specifier.contains(Version(got[0]), prereleases=True):
            problems.append(f"{req.name}=={got[0]} in the lock does not satisfy {text!r}")
    torch = pins.get("torch")
    if torch and not torch[0].endswith("+cpu"):
        problems.append(f"the locked torch {torch[0]} is not the CPU build")
    return problems


# --- installing ------------------------------------------------------------------------------


def _pip(python: str, *args: str, quiet: bool = True, check: bool = True) -> int:
    cmd = [python, "-m", "pip", "install", "--disable-pip-version-check", *args]
    if quiet:
        cmd.insert(4, "-q")
    print("+", " ".join(cmd[1:]), flush=True)
    rc = subprocess.run(cmd).returncode
    if check and rc:
        raise DepsError(f"pip failed ({rc}): {' '.join(cmd[1:])}")
    return rc


def _run(cmd: list[str]) -> None:
    print("+", " ".join(Path(cmd[0]).name if i == 0 else c for i, c in enumerate(cmd)), flush=True)
    if rc := subprocess.run(cmd).returncode:
        raise DepsError(f"{Path(cmd[0]).name} failed ({rc}): {' '.join(cmd[1:])}")


def _bootstrap_uv(python: str, where: Path) -> str | None:
    """uv from the lock (its own hash-checked wheel, installed by ``python``'s pip into
    ``where``, outside the target environment), or None to let pip install everything."""
    if os.environ.get("DEPS_INSTALLER", "uv") == "pip":
        return None
    version, hashes = parse_lock(LOCK).get("uv", (None, []))
    if version is None:
        return None
    req = where.with_suffix(".txt")
    req.write_text(f"uv=={version} " + " ".join(f"--hash=sha256:{h}" for h in hashes) + "\n")
    if _pip(python, "--no-deps", "--require-hashes", "--target", str(where), "-r",
            str(req), check=False):  # fmt: skip
        print("  (uv could not be installed: pip installs the rest)")
        return None
    uv = where / "bin" / "uv"
    return str(uv) if uv.exists() else None


def installed(python: str) -> dict[str, str]:
    out = subprocess.run(
        [python, "-c", "import json, importlib.metadata as m; print(json.dumps("
         "{d.metadata['Name']: d.version for d in m.distributions()}))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return {normalise(k): v for k, v in json.loads(out.stdout).items()}


def install(
    python: str,
    torch: str = "cpu",
    editable: bool = True,
    sync: bool = True,
    group: str = "all",
    project: bool = True,
) -> None:
    """The locked set (or one ``group`` of it: see :func:`subset`) into ``python``'s
    environment, then the project itself (unless ``project`` is False); with ``sync``, what
    the lock no longer holds is removed (so an existing venv ends up equal to a fresh one)."""
    if problems := check_files_only():
        raise DepsError("; ".join(problems))
    wanted = set(parse_lock(LOCK)) | {"torch"} if group == "all" else subset(group)
    if "torch" in wanted:
        _install_torch(python, torch)
    with tempfile.TemporaryDirectory() as tmp:
        reqs = LOCK if group == "all" else _write_subset(wanted, Path(tmp) / f"{group}.txt")
        uv = _bootstrap_uv(python, Path(tmp) / "uv")
        if uv:  # the same hash-checked files, fetched in parallel: about 3x faster than pip here
            _run([uv, "pip", "install", "--python", python, "--no-deps", "--require-hashes",
                  "-r", str(reqs)])  # fmt: skip
        else:
            _pip(python, "--no-deps", "--require-hashes", "-r", str(reqs))
    if project:
        _pip(python, "--no-deps", *(["-e"] if editable else []), str(ROOT))
    if sync:
        keep = wanted | KEEP
        if torch != "cpu":
            keep |= {n for n in installed(python) if n.startswith(("nvidia-", "triton"))}
        extra = sorted(set(installed(python)) - keep)
        if extra:
            print("  no longer locked, removed:", " ".join(extra), flush=True)
            _run([python, "-m", "pip", "uninstall", "-y", "-q", *extra])
    if group == "all" or not project:  # a group's project metadata names what it left out
        rc = subprocess.run([python, "-m", "pip", "check"]).returncode
        if rc:
            raise DepsError("pip check found broken requirements in the installed set")


def _install_torch(python: str, torch: str) -> None:
    if torch == "cpu":
        # a wheelhouse or mirror in pip's own configuration (find-links) is used when it holds
        # the locked file (same hash); otherwise PyTorch's CPU index, named in the file
        offline = ("--no-deps", "--require-hashes", "--no-index", "-r", str(TORCH_LOCK))
        if _pip(python, *offline, check=False):
            print("  (no local copy of the locked torch: fetching it from PyTorch's CPU index)")
            _pip(python, "--no-deps", "--require-hashes", "-r", str(TORCH_LOCK))
    else:  # a CUDA build: its nvidia-* libraries come with it, not from the lock
        version = parse_lock(TORCH_LOCK)["torch"][0].split("+")[0]
        _pip(python, "--index-url", TORCH_INDEX.format(variant=torch), f"torch=={version}")


def _write_subset(names: set[str], path: Path) -> Path:
    """The lock's entries for ``names`` (hashes and all) as a requirements file."""
    blocks = re.split(r"\n(?=\S)", LOCK.read_text())
    keep = [b for b in blocks if (m := re.match(r"([A-Za-z0-9_.\-]+)[\[=]", b))
            and normalise(m.group(1)) in names]  # fmt: skip
    path.write_text("\n".join(b.rstrip() for b in keep) + "\n")
    return path


def check_files_only() -> list[str]:
    """The part of ``check`` that needs nothing but the standard library."""
    for path in (LOCK, TORCH_LOCK):
        if not path.is_file():
            return [f"{path.relative_to(ROOT)} is missing: run `make lock`"]
    if recorded_digest() != inputs_digest():
        return ["pyproject.toml's dependencies changed since the lock was written: run `make lock`"]
    return []


# --- resolving -------------------------------------------------------------------------------


def _uv() -> str:
    for candidate in (Path(sys.executable).parent / "uv", shutil.which("uv")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise DepsError("uv is not installed: `make install` puts it in .venv (the dev extra)")


def _torch_source(version: str) -> str:
    """Where uv finds the CPU torch wheel: a local wheelhouse from pip's configuration when it
    holds one (an offline mirror; the hash is the file's own), else PyTorch's CPU index."""
    override = os.environ.get("MOUTHMAP_TORCH_FIND_LINKS")
    if override:
        return override
    try:
        conf = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                              capture_output=True, text=True, timeout=60).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        conf = ""
    dirs = re.findall(r"find-links='([^']+)'", conf) + os.environ.get("PIP_FIND_LINKS", "").split()
    for d in dirs:
        path = Path(d.removeprefix("file://"))
        if path.is_dir() and any(path.glob(f"torch-{version}+cpu-cp311-*.whl")):
            return str(path)
    return TORCH_INDEX.format(variant="cpu") + "/torch/"


def lock(upgrade: bool = False, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Resolve pyproject.toml (+ the dev extra, CPU torch) into the two lock files."""
    out_dir = out_dir or LOCK.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    version = torch_version()
    with tempfile.TemporaryDirectory() as tmp:
        constraint = Path(tmp) / "torch-cpu.in"
        constraint.write_text(f"torch=={version}+cpu\n" + "".join(f"{c}\n" for c in CONSTRAINTS))
        full = Path(tmp) / "full.txt"
        if LOCK.is_file() and not upgrade:  # the current pins are uv's preferences
            full.write_text(LOCK.read_text())
        cmd = [
            _uv(), "pip", "compile", str(PYPROJECT), *(f"--extra={e}" for e in EXTRAS),
            "--generate-hashes", "--python-version", PYTHON_VERSION,
            "--python-platform", PLATFORM, "-c", str(constraint),
            "--find-links", _torch_source(version), "--no-emit-find-links",
            "--custom-compile-command", "make lock", "-o", str(full), "--quiet",
        ]  # fmt: skip
        if upgrade:
            cmd.append("--upgrade")
        print("+", " ".join(cmd[1:]), flush=True)
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            raise DepsError("uv could not resolve the dependencies:\n" + proc.stderr.strip())
        where = "scripts/deps.py (CPU torch, CONSTRAINTS)"
        text = full.read_text().replace(f"-c {constraint}", where)
        main, torch = _split_torch(text)
    header = (
        f"{DIGEST_LINE}{inputs_digest()}\n"
        f"# Linux x86-64, CPython {PYTHON_VERSION}; torch is in torch-cpu.txt. "
        "Do not edit: `make lock` rewrites it, `make upgrade` moves every pin.\n"
    )
    (out_dir / LOCK.name).write_text(header + main)
    (out_dir / TORCH_LOCK.name).write_text(
        "# PyTorch's CPU build; `make lock` rewrites this file. For a CUDA build see the README.\n"
        f"--index-url {TORCH_INDEX.format(variant='cpu')}\n\n" + torch
    )
    return out_dir / LOCK.name, out_dir / TORCH_LOCK.name


def _split_torch(text: str) -> tuple[str, str]:
    """(everything but torch, torch's own entry) of a uv requirements file."""
    blocks = re.split(r"\n(?=\S)", text)
    torch = [b for b in blocks if re.match(r"torch==", b)]
    if len(torch) != 1:
        raise DepsError("the resolution has no torch entry")
    rest = [b for b in blocks if b is not torch[0]]
    return "\n".join(rest).rstrip() + "\n", torch[0].rstrip() + "\n"


def upgrade(python: str) -> None:
    """Re-resolve to the newest allowed versions, install them, run `make test`; keep the new
    lock only when the tests pass, else put the old one (and its install) back."""
    before = {p: p.read_text() for p in (LOCK, TORCH_LOCK)}
    old = parse_lock(LOCK) | parse_lock(TORCH_LOCK)
    lock(upgrade=True)
    new = parse_lock(LOCK) | parse_lock(TORCH_LOCK)
    changed = sorted(n for n in new.keys() | old.keys() if old.get(n) != new.get(n))
    if not changed:
        print("nothing to upgrade: every pin is already the newest allowed")
        return
    for name in changed:
        print(f"  {name}: {old.get(name, ('-',))[0]} -> {new.get(name, ('-',))[0]}")
    try:
        install(python)
        rc = subprocess.run(["make", "test"], cwd=ROOT).returncode
    except DepsError as e:
        print(f"install failed: {e}", file=sys.stderr)
        rc = 1
    if rc == 0:
        print(f"upgraded {len(changed)} packages; the tests pass: commit requirements/")
        return
    for path, text in before.items():
        path.write_text(text)
    install(python)
    raise DepsError("the upgraded set failed `make test`: the old lock is back in place")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("install", help="install the lock into PYTHON's environment")
    p.add_argument("python")
    p.add_argument(
        "--torch", default=os.environ.get("TORCH", "cpu"),
        help="cpu (locked) or a CUDA variant of PyTorch's index, e.g. cu128",
    )  # fmt: skip
    p.add_argument("--no-editable", action="store_true", help="install the project as a copy")
    p.add_argument("--no-sync", action="store_true", help="keep packages the lock does not hold")
    p.add_argument("--group", default="all", help="all (default), runtime, or a group of "
                   "[tool.mouthmap.deps-groups] (pipeline, triton, proxy)")  # fmt: skip
    p.add_argument("--no-project", action="store_true", help="the dependencies only")
    sub.add_parser("check", help="the lock agrees with pyproject.toml")
    p = sub.add_parser("lock", help="re-resolve pyproject.toml into requirements/")
    p.add_argument("--upgrade", action="store_true", help="newest allowed versions of everything")
    p = sub.add_parser("upgrade", help="lock --upgrade, install, make test; keep only if green")
    p.add_argument("--python", default=sys.executable)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "install":
            install(args.python, args.torch, not args.no_editable, not args.no_sync,
                    args.group, not args.no_project)  # fmt: skip
        elif args.cmd == "check":
            problems = check()
            for problem in problems:
                print(f"lock: {problem}", file=sys.stderr)
            if problems:
                return 1
            print(f"lock agrees with pyproject.toml ({len(parse_lock(LOCK)) + 1} packages)")
        elif args.cmd == "lock":
            paths = lock(args.upgrade)
            print("wrote", ", ".join(str(p.relative_to(ROOT)) for p in paths))
        else:
            upgrade(args.python)
    except DepsError as e:
        print(f"deps: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
