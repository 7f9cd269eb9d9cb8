"""Running spin on a Promela model from a test, and reading what it found.

``run_spin`` generates the verifier (``spin -a``), compiles it (``gcc``) and runs the exhaustive
search (``./pan``) in a fresh work directory, so that checks run side by side under pytest-xdist.
It returns the figures pan prints (errors, states stored, transitions, depth reached) and, when
pan found an error, spin's replay of the counterexample (``spin -t -p``) for the test's message.

One run checks one thing:

* ``ltl=None``: safety only, the model's assertions and invalid end states (pan compiled with
  ``-DSAFETY``). The model's ``ltl`` blocks are left out of the copy that is checked, so that no
  never claim widens the search.
* ``ltl="name"``: the model's ``ltl name { ... }`` block alone (the other blocks are left out),
  searched for acceptance cycles (``pan -a``); with ``liveness=True`` under weak fairness
  (``pan -a -f``), which a property "eventually ..." needs when processes can idle.

A model is one self-contained file (or includes only files beside it: every ``*.pml`` in the
model's directory is copied with it). Mutants are selected by ``defines`` (``MUTANT_X`` becomes
``-DMUTANT_X`` for spin's preprocessor).

spin or gcc missing is an error, never a skip, in CI (``CI=true``) and out of it: ``make tools``
installs spin, and a verification test that skips proves nothing.

``python -m tests.verification.spin FIGURES_FILE`` prints the figures recorded with
``record_figures`` (the tests record when ``SLUICE_SPIN_FIGURES`` names a file) as the Markdown
table that ``docs/verification.md`` shows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

FIGURES_ENV = "SLUICE_SPIN_FIGURES"
_LTL_BLOCK = re.compile(r"^\s*ltl\s+(\w+)\s*\{[^}]*\}", re.MULTILINE)


class SpinUnavailableError(RuntimeError):
    """spin or the C compiler its verifiers need is not installed (``make tools`` installs it)."""


class SpinError(RuntimeError):
    """spin, gcc or pan stopped abnormally (a syntax error in the model, a compile error...)."""


@dataclass(frozen=True)
class SpinResult:
    """What one pan search reported."""

    errors: int
    states_stored: int
    transitions: int
    depth_reached: int
    seconds: float
    output: str
    trail: str | None
    # pan reached the depth bound somewhere: the search was cut, so "no error" proves nothing.
    depth_limited: bool
    # What the model itself printed (its printf) along the counterexample (``spin -t``).
    printed: str | None = None

    @property
    def proved(self) -> bool:
        """No error in a search that was not cut by the depth bound."""
        return self.errors == 0 and not self.depth_limited

    def summary(self) -> str:
        return (
            f"errors {self.errors}, {self.states_stored} states, {self.transitions} transitions, "
            f"depth {self.depth_reached}, {self.seconds:.2f} s"
        )


def require_tools() -> None:
    """Raise ``SpinUnavailableError`` unless spin and gcc are on the PATH."""
    for tool in ("spin", "gcc"):
        if shutil.which(tool) is None:
            raise SpinUnavailableError(
                f"{tool} is not installed; `make tools` installs spin (Debian's package) and "
                "the verification tests need it (they fail rather than skip without it)"
            )


def run_spin(
    model: Path,
    *,
    defines: Sequence[str] = (),
    ltl: str | None = None,
    liveness: bool = False,
    search_depth: int = 100_000,
    work_dir: Path,
    reduce: bool = True,
    hash_bits: int = 22,
    compile_flags: Sequence[str] = (),
    shortest: bool = False,
    timeout_s: float = 300.0,
) -> SpinResult:
    """Check ``model`` exhaustively with spin and return pan's figures.

    ``defines`` are preprocessor names (``"MUTANT_X"`` or ``"BOUND=3"``); ``ltl`` names one of the
    model's ``ltl`` blocks; ``liveness`` adds weak fairness; ``search_depth`` is pan's ``-m``;
    ``reduce=False`` turns partial-order reduction off; ``hash_bits`` is pan's ``-w``;
    ``compile_flags`` are added to gcc's (``-DCOLLAPSE`` halves the memory of a large search,
    exactly, for a little more time); ``shortest=True`` searches on for the shortest
    counterexample (``pan -i``), the one to read or to replay against the code.
    """
    require_tools()
    if liveness and ltl is None:
        raise ValueError("liveness=True checks an ltl property: name it with ltl=")
    started = time.monotonic()
    work_dir.mkdir(parents=True, exist_ok=True)
    for sibling in model.parent.glob("*.pml"):
        if sibling != model:
            shutil.copyfile(sibling, work_dir / sibling.name)
    source = model.read_text()
    names = _LTL_BLOCK.findall(source)
    if ltl is not None and ltl not in names:
        raise ValueError(f"{model.name} has no ltl block {ltl!r} (it has {names})")
    kept = _LTL_BLOCK.sub(
        lambda match: match.group(0) if match.group(1) == ltl else "",
        source,
    )
    checked = work_dir / model.name
    checked.write_text(kept)

    define_args = [f"-D{name}" for name in defines]
    _run(["spin", "-a", *define_args, checked.name], work_dir, timeout_s, "spin -a")
    cflags = ["-O2", "-w", "-DVECTORSZ=4096"]
    if ltl is None:
        cflags.append("-DSAFETY")
    if liveness:
        cflags.append("-DNFAIR=3")
    if not reduce:
        cflags.append("-DNOREDUCE")
    if shortest:
        cflags.append("-DREACH")
    cflags.extend(compile_flags)
    _run(["gcc", *cflags, "-o", "pan", "pan.c"], work_dir, timeout_s, "gcc")
    pan_args = ["./pan", "-n", f"-m{search_depth}", f"-w{hash_bits}"]
    if shortest:
        pan_args.append("-i")
    if ltl is not None:
        pan_args.append("-a")
        if liveness:
            pan_args.append("-f")
    output = _run(pan_args, work_dir, timeout_s, "pan", check=False)
    figures = _parse(output)
    errors = figures["errors"]
    if shortest and errors:
        # pan -i counts each shorter counterexample it found on the way: one property broken.
        errors = 1
    trail = printed = None
    if figures["errors"] and (work_dir / f"{checked.name}.trail").exists():
        trail = _run(
            ["spin", "-t", "-p", "-g", *define_args, checked.name],
            work_dir,
            timeout_s,
            "spin -t",
            check=False,
        )
        printed = _run(["spin", "-t", *define_args, checked.name], work_dir, timeout_s, "spin -t")
    return SpinResult(
        errors=errors,
        states_stored=figures["states_stored"],
        transitions=figures["transitions"],
        depth_reached=figures["depth_reached"],
        seconds=time.monotonic() - started,
        output=output,
        trail=trail,
        depth_limited="max search depth too small" in output
        or figures["depth_reached"] >= search_depth - 1,
        printed=printed,
    )


def _run(
    command: list[str], work_dir: Path, timeout_s: float, what: str, *, check: bool = True
) -> str:
    try:
        completed = subprocess.run(
            command, cwd=work_dir, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise SpinError(f"{what} took more than {timeout_s:.0f} s (in {work_dir})") from exc
    output = completed.stdout + completed.stderr
    if check and completed.returncode != 0:
        raise SpinError(f"{what} failed ({completed.returncode}):\n{output}")
    if what == "pan" and "errors:" not in output:
        raise SpinError(f"pan stopped without its report ({completed.returncode}):\n{output}")
    return output


def _parse(output: str) -> dict[str, int]:
    def number(pattern: str) -> int:
        match = re.search(pattern, output)
        if match is None:
            raise SpinError(f"pan's report has no {pattern!r}:\n{output}")
        return int(match.group(1))

    return {
        "errors": number(r"errors:\s*(\d+)"),
        "states_stored": number(r"(\d+)\s+states, stored"),
        "transitions": number(r"(\d+)\s+transitions"),
        "depth_reached": number(r"depth reached\s*(\d+)"),
    }


def record_figures(check: str, result: SpinResult, bounds: str = "") -> None:
    """Append one check's figures to the file ``SLUICE_SPIN_FIGURES`` names (if it is set).

    Each line is one JSON object, appended in one write, so parallel test workers can share it.
    """
    path = os.environ.get(FIGURES_ENV)
    if not path:
        return
    figures = asdict(result)
    del figures["output"], figures["trail"], figures["printed"]
    line = json.dumps({"check": check, "bounds": bounds, **figures}) + "\n"
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(line)


def figures_table(path: Path) -> str:
    """The recorded figures as a Markdown table, one row per check, in the order of check."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows.sort(key=lambda row: row["check"])
    lines = [
        "| check | bounds | errors | states stored | transitions | depth | seconds |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['check']} | {row['bounds']} | {row['errors']} | {row['states_stored']} | "
            f"{row['transitions']} | {row['depth_reached']} | {row['seconds']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.verification.spin FIGURES_FILE")
    print(figures_table(Path(sys.argv[1])))
