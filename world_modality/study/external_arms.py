"""External policy servers as arms of a study (`study --arm NAME=ws://HOST:PORT`): their flags read into stated
conventions (inference/arm.py), one untrained, unseeded run each evaluated on every suite the study evaluates, their
pairing with the trained arms' seeds, and their lines in the report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..inference.arm import ArmSpec

EXTERNAL = "external"  # an external arm's run's training suite: it trains on none (its records' memory says the same)
EXTERNAL_SEED = 0  # the seed its one run is recorded under: it has no training seed
DEFAULT_TIMEOUT_S = 120.0
# The flags that describe one arm, NAME first, and the form each takes.
PER_ARM = {
    "--arm-convention": ("arm_convention", "NAME=CONVENTION"),
    "--arm-spec": ("arm_spec", "NAME=FILE"),
    "--arm-set": ("arm_set", "NAME:FIELD=VALUE"),
    "--arm-train-starts": ("arm_train_starts", "NAME=PATH"),
}


@dataclass(frozen=True)
class ExternalArm:
    """One external arm of a study: its stated conventions (its identity, with the hash of the training starts it
    declares), and where it is served (not its identity: the same arm may be served from anywhere)."""

    spec: ArmSpec
    address: str | None  # ws://HOST:PORT; None when read back from a study's settings (study merge needs none)
    train_starts: str | None = None  # its training data (dataset folder or start-states file); None: not checked
    train_starts_sha256: str | None = None  # of the file the held-out check reads

    @property
    def name(self) -> str:
        return self.spec.name

    def identity(self) -> dict:
        return {**self.spec.to_dict(), "train_starts_sha256": self.train_starts_sha256}


def add_flags(p) -> None:
    """The study's flags of external arms."""
    from ..inference.arm import CONVENTIONS, FIELD_HELP

    p.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar="NAME=ws://HOST:PORT",
        help="also evaluate an external policy server speaking openpi's LIBERO example protocol as an arm named NAME "
        "(not a preset's name): no training, no seeds, one run on every suite and --pro perturbation, on the trained "
        "arms' starts, contrasted with E0 (or the first arm); every convention stated by --arm-convention, --arm-spec "
        "or --arm-set; repeatable (default: none)",
    )
    p.add_argument(
        "--arm-convention",
        dest="arm_convention",
        action="append",
        default=[],
        metavar="NAME=CONVENTION",
        help=f"arm NAME's named set of conventions, one of {', '.join(CONVENTIONS)} (openpi's LIBERO example client: "
        + ", ".join(f"{k} {v}" for k, v in CONVENTIONS["openpi-libero"].items())
        + "); chunk_size is the served model's and still has to be stated (default: none)",
    )
    p.add_argument(
        "--arm-spec",
        dest="arm_spec",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="JSON file of arm NAME's conventions (an object of FIELD: VALUE), replacing --arm-convention's where both "
        "state a field (default: none)",
    )
    p.add_argument(
        "--arm-set",
        dest="arm_set",
        action="append",
        default=[],
        metavar="NAME:FIELD=VALUE",
        help="one convention of arm NAME, replacing --arm-spec's and --arm-convention's; repeatable. Fields: "
        + "; ".join(f"{k}: {v}" for k, v in FIELD_HELP.items()),
    )
    p.add_argument(
        "--arm-train-starts",
        dest="arm_train_starts",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="arm NAME's training data, whose starts its evaluations must not start from (as eval --train_starts): a "
        "dataset folder, or a start-states file (JSON lines with suite, task_id, sim_state) (default: none, its "
        "held-out starts not checked, and the report says so)",
    )
    p.add_argument(
        "--arm-timeout",
        dest="arm_timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"seconds an arm's server may take to answer one request before the episode ends as an error (retried "
        f"by a rerun); not part of the study's identity (default: {DEFAULT_TIMEOUT_S:g})",
    )


def parse_flags(args) -> tuple[tuple[ExternalArm, ...], float]:
    """The external arms the flags state and the reply timeout; ConfigError naming a bad value and what was expected:
    a per-arm flag of no --arm, an arm named twice or after a preset, a convention unstated or unknown, training starts
    that cannot be read."""
    from ..config import PRESETS, ConfigError
    from ..inference.arm import ArmSpecError, build_spec, field_value, parse_arm

    given = list(getattr(args, "arm", None) or [])
    per_arm = {flag: list(getattr(args, dest, None) or []) for flag, (dest, _) in PER_ARM.items()}
    timeout = getattr(args, "arm_timeout", None)
    if not given:
        stray = [flag for flag, values in per_arm.items() if values] + ["--arm-timeout"] * (timeout is not None)
        if stray:
            raise ConfigError(f"{stray[0]} describes an external arm; name it with --arm NAME=ws://HOST:PORT.")
        return (), DEFAULT_TIMEOUT_S
    timeout = DEFAULT_TIMEOUT_S if timeout is None else timeout
    if not timeout > 0:
        raise ConfigError(f"--arm-timeout must be positive seconds, got {timeout!r}.")
    presets = {p.casefold(): p for p in PRESETS}
    addresses: dict[str, str] = {}
    for text in given:
        try:
            name, address = parse_arm(text)
        except ArmSpecError as e:
            raise ConfigError(f"--arm {text!r}: {e}") from None
        if name.casefold() in presets:
            raise ConfigError(
                f"--arm {text!r}: {name!r} names the experiment preset {presets[name.casefold()]!r} (case aside), "
                "and an external arm's row and contrasts must not pass for a trained arm's; expected another name."
            )
        # Case-insensitively: a name also names the arm's folder, and some file systems ignore case.
        same = [n for n in addresses if n.casefold() == name.casefold()]
        if same:
            raise ConfigError(f"--arm names arm {name!r} twice (also as {same[0]!r}); expected each arm once.")
        addresses[name] = address
    names = list(addresses)
    convention, spec_file, starts = (
        _one_per_arm(flag, per_arm[flag], names) for flag in ("--arm-convention", "--arm-spec", "--arm-train-starts")
    )
    fields: dict[str, list[str]] = {n: [] for n in names}
    for text in per_arm["--arm-set"]:
        name, sep, field = text.partition(":")
        _check_named("--arm-set", text, name if sep else None, names)
        try:
            field_value(field)
        except ArmSpecError as e:
            raise ConfigError(f"--arm-set {text!r}: {e}") from None
        fields[name].append(field)
    arms = []
    for name in names:
        try:
            spec = build_spec(name, convention.get(name), spec_file.get(name), fields[name])
        except ArmSpecError as e:
            raise ConfigError(
                f"{e} State arm {name}'s conventions with --arm-convention {name}=openpi-libero (openpi's LIBERO "
                f"example's), --arm-spec {name}=FILE (JSON) or --arm-set {name}:FIELD=VALUE."
            ) from None
        path = starts.get(name)
        sha = None if path is None else training_starts_sha256(name, path)
        arms.append(ExternalArm(spec, addresses[name], path, sha))
    return tuple(arms), float(timeout)


def _check_named(flag: str, text: str, name: str | None, names: list[str]) -> None:
    from ..config import ConfigError

    if name is None:
        raise ConfigError(f"{flag} {text!r}: expected {PER_ARM[flag][1]}, NAME an arm of --arm.")
    if name not in names:
        raise ConfigError(
            f"{flag} {text!r}: no arm is named {name!r}; expected {PER_ARM[flag][1]} with NAME one of "
            f"{', '.join(names)} (each named by --arm NAME=ws://HOST:PORT)."
        )


def _one_per_arm(flag: str, texts: list[str], names: list[str]) -> dict[str, str]:
    """{arm: value} of a NAME=VALUE flag given at most once per arm (a second would leave which one holds unsaid)."""
    from ..config import ConfigError

    out: dict[str, str] = {}
    for text in texts:
        name, sep, value = text.partition("=")
        _check_named(flag, text, name if sep and value else None, names)
        if name in out:
            raise ConfigError(f"{flag} is given twice for arm {name!r} ({out[name]!r}, {value!r}); expected it once.")
        out[name] = value
    return out


def training_starts_sha256(name: str, path: str) -> str:
    """sha256 of the file arm `name`'s held-out check reads (a start-states file, or a dataset's
    meta/start_states.jsonl, else its meta/info.json), once it reads as training starts; ConfigError otherwise."""
    import hashlib

    from ..config import ConfigError
    from ..data.starts import START_STATES_FILE
    from ..evaluate.closed_loop import arm_overlap

    try:  # no evaluated start: only the training starts are read, which is all that is checked here
        arm_overlap(name, path, "libero_spatial", {}, allow=False)
    except (ConfigError, ValueError) as e:
        raise ConfigError(f"--arm-train-starts {name}={path} (each evaluation's --train_starts): {e}") from None
    p = Path(path)
    read = p if p.is_file() else next(f for f in (p / START_STATES_FILE, p / "meta" / "info.json") if f.is_file())
    return hashlib.sha256(read.read_bytes()).hexdigest()


def from_identity(records, where) -> tuple[ExternalArm, ...]:
    """The external arms a study's settings file records (ExternalArm.identity()), without their addresses."""
    from ..config import ConfigError
    from ..inference.arm import ArmSpecError

    try:
        return tuple(
            ExternalArm(
                ArmSpec.from_dict({k: v for k, v in r.items() if k != "train_starts_sha256"}),
                None,
                None,
                r.get("train_starts_sha256"),
            )
            for r in records
        )
    except (ArmSpecError, AttributeError) as e:
        raise ConfigError(f"{where}: its external_arms are not the arms a study records ({e}).") from None


def command_flags(s) -> list[str]:
    """The flags that state the study's external arms again: each arm's convention closest to its spec, and every
    field that differs from it."""
    from ..inference.arm import CONVENTIONS

    parts = []
    for arm in s.external_arms:
        stated = arm.spec.conventions()
        name, base = min(CONVENTIONS.items(), key=lambda kv: sum(stated[k] != v for k, v in kv[1].items()))
        parts += ["--arm", f"{arm.name}={arm.address}", "--arm-convention", f"{arm.name}={name}"]
        parts += [w for k, v in stated.items() if base.get(k) != v for w in ("--arm-set", f"{arm.name}:{k}={v}")]
        if arm.train_starts is not None:
            parts += ["--arm-train-starts", f"{arm.name}={arm.train_starts}"]
    if s.external_arms and s.arm_timeout_s != DEFAULT_TIMEOUT_S:
        parts += ["--arm-timeout", str(s.arm_timeout_s)]
    return parts


def names(s) -> tuple[str, ...]:
    return tuple(a.name for a in s.external_arms)


def arms_of(s) -> tuple[str, ...]:
    """Every arm of the study, the trained ones first: the report's rows and the contrasts' order."""
    return (*s.experiments, *names(s))


def seeds_of(s, arm: str) -> tuple:
    return (EXTERNAL_SEED,) if arm in names(s) else s.seeds


def runs(s) -> list[tuple[str, str, int]]:
    """Each external arm's one run, as the study's runs are named (training suite, experiment, seed)."""
    return [(EXTERNAL, a.name, EXTERNAL_SEED) for a in s.external_arms]


def stages(s) -> list[tuple]:
    """Each external arm's evaluations, on every suite and LIBERO-PRO perturbation the study evaluates."""
    targets = [t for suite in s.suites for t in (suite, *(f"{suite}_{p}" for p in s.pro))]
    return [("eval", *run, target) for run in runs(s) for target in targets]


def check_servers(s, held: list[tuple]) -> None:
    """Each external arm of the runs `held` (a shard's, or all) answers at its address, asked once before anything
    runs; ConfigError naming the first that does not (as eval --arm does)."""
    from ..evaluate.closed_loop import EvalSettings, check_arm_server

    mine = {r[1] for r in held if r[0] == EXTERNAL}
    for arm in s.external_arms:
        if arm.name in mine:
            settings = EvalSettings(arm=arm.spec.to_dict(), arm_address=arm.address, arm_timeout_s=s.arm_timeout_s)
            check_arm_server(settings)


def evaluate_arm(s, name: str, suite: str, tasks, n_episodes, init_states, folder: Path) -> dict:
    """{"episodes", "errors", "protocol", "arm", "provenance"} of arm `name` on `suite`, as a trained run's evaluation
    (stages.eval_run), its console output in <folder>/eval.log; the folder resumes as any evaluation's."""
    import contextlib

    from ..evaluate.closed_loop import EvalSettings, evaluate
    from .records import eval_protocol, read_provenance

    arm = next(a for a in s.external_arms if a.name == name)
    out = folder / "eval" / suite
    folder.mkdir(parents=True, exist_ok=True)
    with (
        (folder / "eval.log").open("a") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        r = evaluate(
            EvalSettings(
                arm=arm.spec.to_dict(),
                arm_address=arm.address,
                arm_timeout_s=s.arm_timeout_s,
                train_starts=arm.train_starts,
                suite=suite,
                tasks=tuple(tasks),
                n_episodes=n_episodes,
                init_states=init_states,
                workers=s.workers,
                max_steps=s.max_steps,
                out=str(out),
            ),
            progress=False,
        )
    checked = {k: r.overlap.get(k) for k in ("checked", "how", "training_starts")}
    return {
        "episodes": r.finished,
        "errors": r.errors,
        "protocol": eval_protocol(r.settings, suite),
        "arm": {**arm_row(arm), "overlap": checked},
        "provenance": {"eval": read_provenance(out / "settings.json")},  # no "train": it is not trained here
    }


def arm_row(arm: ExternalArm) -> dict:
    """The arm as the Arms table and study.json describe it: what it acts by, and every stated convention."""
    return {
        "external": True,
        "world_encoder": "its own (external policy server)",
        "backbone": "its own (external policy server)",
        "chunk_size": arm.spec.chunk_size,
        "replan_every": arm.spec.replan_every,
        "memory_mode": "external",
        "world_encoder_weights": "not stated",
        "world_encoder_ids": [],
        "conventions": arm.spec.to_dict(),
        "describe": arm.spec.describe(),
        "train_starts_sha256": arm.train_starts_sha256,
    }


def arm_rows(s, evals: list[dict]) -> dict:
    """{name: row} of each external arm, with what its evaluations say of its held-out starts."""
    out = {}
    for arm in s.external_arms:
        checks = [
            r["arm"]["overlap"] for r in evals if r["experiment"] == arm.name and (r.get("arm") or {}).get("overlap")
        ]
        row = arm_row(arm)
        if arm.train_starts_sha256 is None:
            row["held_out"] = f"not checked (no --arm-train-starts {arm.name}=PATH given)"
        elif checks and all(c["checked"] for c in checks):
            n = max(c["training_starts"] for c in checks)
            row["held_out"] = (
                f"checked against {n} training starts (sha256 {arm.train_starts_sha256[:16]}), none shared"
            )
        elif checks:
            row["held_out"] = "not checked: " + next(c["how"] for c in checks if not c["checked"])
        else:
            row["held_out"] = f"to be checked against its training starts (sha256 {arm.train_starts_sha256[:16]})"
        out[arm.name] = row
    return out


def partnered(runs: list[dict]) -> list[dict]:
    """A contrast's runs (contrasts._runs) with an external arm's one run repeated under each training seed of the
    arm it is paired with: a pair is one start, and the arm's outcome at a start is the same whichever seed of the
    other arm it meets. Starts stay the clusters, so no start counts for more than another."""
    seeds = sorted({r["train_seed"] for r in runs if not r.get("external")}, key=str)
    if not seeds or not any(r.get("external") for r in runs):
        return runs
    return [r for r in runs if not r.get("external")] + [
        {**r, "train_seed": seed} for r in runs if r.get("external") for seed in seeds
    ]


def one_run(outcomes: dict) -> dict:
    """An external arm's side of the method-level contrast ({seed: {start: success}}) as the one run it is: its
    copies under the other arm's seeds (partnered) are not seeds to redraw."""
    merged = {start: v for by_start in outcomes.values() for start, v in by_start.items()}
    return {EXTERNAL_SEED: merged} if merged else {}


def render(arms: dict) -> list[str]:
    """The report's section on the external arms: how each was run and its stated conventions."""
    external = {name: a for name, a in arms.items() if a.get("external")}
    if not external:
        return []
    return [
        "",
        "## External arms",
        "",
        "Policy servers evaluated as arms (`study --arm`): not trained by the study, so one run each, with no training "
        "seed (recorded as seed 0), on the same starts as the trained arms. In a contrast an external arm's outcome "
        "at a start is paired with each training seed of the other arm (the start stays the cluster). Each states "
        "what it is sent and how its actions are executed (every convention is in study.json):",
        "",
        *(f"- {a['describe']}; held-out starts {a['held_out']}" for a in external.values()),
    ]
