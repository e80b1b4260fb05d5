"""A study's settings: names checked before anything runs, the CPU/GPU budgets, and the identity file that makes a
rerun into the same folder continue the same study (or be refused)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

SUITE_COLUMNS = {"libero_spatial": "Spatial", "libero_object": "Object", "libero_goal": "Goal", "libero_10": "Long"}
SETTINGS_FILE = "study_settings.json"
INVOCATIONS_FILE = "invocations.jsonl"


@dataclass(frozen=True)
class Budget:
    demos_per_task: int  # scripted-expert demonstrations per task
    epochs: int  # training epochs per run
    batch_size: int  # training samples per step
    image_size: int  # policy image side in pixels (also the recorded frames' side)
    world_image_size: int  # world-encoder input side in pixels
    workers: int  # simulator processes for generation and evaluation
    lr_schedule: str = "constant"  # learning rate after warmup: constant, or cosine decay to 0 at the last update
    # The models (real_models.py): a path is a local folder or a hub-cache id already on disk.
    backbone: str = "tiny-qwen2.5-vl"  # tiny-qwen2.5-vl (embedded, random) | qwen2.5-vl | tiny-smolvlm | smolvlm
    backbone_path: str | None = None  # a real backbone's weights
    backbone_dtype: str = "float32"  # the backbone's weights: float32 | bfloat16 | float16
    world_encoder: str = "pretrained"  # image world encoder of the E2 family: pretrained | random | vjepa2 (real)
    world_encoder_path: str | None = None  # the V-JEPA 2 checkpoint of world_encoder vjepa2
    world_encoder_dtype: str = "auto"  # auto: bfloat16 on CUDA, else float32


# cpu: the CPU recipe's winner (bench/results/recipe_libero_spatial.json, row R4: 78/100 on the tuning states,
# ~32 min of training per run on 2 cores); gpu: the real sizes of bench/real_size.py, Qwen2.5-VL-3B (frozen, LoRA)
# and V-JEPA 2 ViT-L (frozen, its own 256-px crop) in bfloat16, at 224 px (a multiple of Qwen's 28-px merged patch).
BUDGETS = {
    "cpu": Budget(
        demos_per_task=30,
        epochs=12,
        batch_size=16,
        image_size=128,
        world_image_size=64,
        workers=2,
        lr_schedule="cosine",
    ),
    "gpu": Budget(
        demos_per_task=50,
        epochs=20,
        batch_size=32,
        image_size=224,
        world_image_size=128,  # the tiny encoder's (E2-Pretrained's), as before: V-JEPA 2 takes its own crop
        workers=8,
        backbone="qwen2.5-vl",
        backbone_path="Qwen/Qwen2.5-VL-3B-Instruct",
        backbone_dtype="bfloat16",
        world_encoder="vjepa2",
        world_encoder_path="facebook/vjepa2-vitl-fpc64-256",
    ),
}


@dataclass(frozen=True)
class StudySettings:
    suites: tuple[str, ...]
    experiments: tuple[str, ...]
    seeds: tuple[int, ...]
    pro: tuple[str, ...]  # LIBERO-PRO perturbations evaluated on each suite
    tasks: tuple[int, ...] | None  # task ids of every suite; None: all
    episodes_per_task: int | None  # standard-suite initial states per task; None: all 50
    pro_episodes: int | None  # LIBERO-PRO initial states per task; None: all
    max_steps: int | None  # control steps per episode; None: each suite's public limit
    demos_per_task: int
    epochs: int
    batch_size: int
    image_size: int
    world_image_size: int
    workers: int  # not part of the identity: it changes no outcome
    out: str
    data: str  # folder of the generated datasets (shared between studies: names carry their settings)
    joint: bool = False  # one policy per experiment and seed over every suite, instead of one per suite
    init_states: tuple[int, ...] | None = None  # standard-suite stored states to run (e.g. 10-49), not the first n
    lr_schedule: str = "constant"  # each run's learning-rate schedule (the budget's)
    # The models and the data (real_models.py, public_data.py); each joins the identity only when not its default
    # (the embedded tiny models, generated demonstrations), so a study begun before they existed continues.
    backbone: str = "tiny-qwen2.5-vl"
    backbone_path: str | None = None
    backbone_dtype: str = "float32"
    world_encoder_path: str | None = None  # None: no arm uses the real V-JEPA 2
    world_encoder_dtype: str = "auto"
    dataset: str | None = None  # a LeRobot LIBERO dataset (folder or hub-cache id) instead of generated demonstrations
    shard: tuple[int, int] | None = None  # (i, n): the i-th of n parts of the runs (shards.py); None: all
    # The weights of the E2-family arms' image encoder (world_encoder.py). "random" is what a study read back
    # without the key ran: the key and the pretraining settings exist only in studies that pretrain.
    world_encoder: str = "random"
    pretrain_steps: int | None = None  # None: no arm uses a pretrained encoder
    pretrain_batch_size: int | None = None
    pretrain_seed: int | None = None
    # Processes that train each run (launch.py): each takes batch_size samples per step, so the update's batch is
    # batch_size x train_processes and an epoch has that many times fewer updates.
    train_processes: int = 1
    # torch's CPU threads in each training process (0: half the cores): rounding only, so never in the identity.
    train_threads: int = 0
    serve: bool = False  # evaluate each run through one batched policy server of it (served.py), not in each worker
    # External policy servers evaluated as arms (external_arms.ExternalArm): their names, conventions and training
    # starts' hash join the identity only when some are given; their addresses and the reply timeout change no outcome.
    external_arms: tuple = ()
    arm_timeout_s: float = 120.0

    def identity(self) -> dict:
        # init_states joins the identity only when given, so a study begun before it existed still continues.
        # shard is not part of it either: every shard of one study holds the same settings, which merge compares.
        # lr_schedule likewise only when not constant (every study before it had a constant rate).
        skip = ("workers", "out", "data", "shard") + (("init_states",) if self.init_states is None else ())
        skip += ("lr_schedule",) if self.lr_schedule == "constant" else ()
        # train_processes changes the update's batch, so it is in it, but only when not 1 (studies before it ran one
        # process); serve is not: a served policy acts as a loaded one, up to float rounding in stacked requests.
        skip += ("serve", "train_threads") + (("train_processes",) if self.train_processes == 1 else ())
        skip += tuple(k for k in MODEL_SETTINGS if getattr(self, k) == StudySettings.__dataclass_fields__[k].default)
        skip += ("external_arms", "arm_timeout_s")
        identity = {k: v for k, v in asdict(self).items() if k not in skip + self._unused_encoder_settings()}
        if self.external_arms:  # so a study without them keeps the identity it had
            identity["external_arms"] = [a.identity() for a in self.external_arms]
        return identity

    def _unused_encoder_settings(self) -> tuple[str, ...]:
        """The world-encoder settings that change no arm of this study: left out of its identity, so a study of
        other arms (and one begun before pretraining was a stage) keeps the identity it had."""
        from .real_models import uses_real_encoder
        from .world_encoder import governed, uses_pretrained

        pretraining = ("pretrain_steps", "pretrain_batch_size", "pretrain_seed")
        if not uses_pretrained(self):
            return pretraining if uses_real_encoder(self) else ("world_encoder", *pretraining)
        return () if governed(self) else ("world_encoder",)


MODEL_SETTINGS = ("backbone", "backbone_path", "backbone_dtype", "world_encoder_path", "world_encoder_dtype", "dataset")


def _names(text: str, choices, what: str, flag: str) -> tuple[str, ...]:
    from ..config import ConfigError

    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values:
        raise ConfigError(f"{flag} is empty; expected one or more {what} of {', '.join(choices)}.")
    bad = [v for v in values if v not in choices]
    if bad:
        raise ConfigError(f"{flag}: unknown {what} {', '.join(map(repr, bad))}; expected some of {', '.join(choices)}.")
    if len(set(values)) != len(values):
        raise ConfigError(f"{flag} names a value twice: {text!r}.")
    return values


def _ints(text: str | None, flag: str, what: str) -> tuple[int, ...] | None:
    from ..ids import parse_ids

    return None if text is None else tuple(parse_ids(text, flag=flag, what=what))


def settings_from_args(args) -> StudySettings:
    """Every name and number checked, so a typo fails before a simulator starts; flags override the budget."""
    from ..config import PRESETS, ConfigError
    from ..sim.suites import PRO_PERTURBATIONS
    from .external_arms import parse_flags

    suites = _names(args.suites, tuple(SUITE_COLUMNS), "suite", "--suites")
    external, arm_timeout_s = parse_flags(args)
    if not args.experiments.strip() and not external:
        raise ConfigError(
            f"--experiments is empty; expected one or more experiments of {', '.join(PRESETS)}, or --arm "
            "NAME=ws://HOST:PORT for a study of external arms only."
        )
    experiments = ()  # none trained: a study of external arms only
    if args.experiments.strip():
        experiments = _names(args.experiments, tuple(PRESETS), "experiment", "--experiments")
    pro = _names(args.pro, PRO_PERTURBATIONS, "perturbation", "--pro") if args.pro else ()
    seeds = _ints(args.seeds, "--seeds", "training seeds")
    if not seeds:
        raise ConfigError(f"--seeds {args.seeds!r} names no seed; expected e.g. '0' or '0,1,2'.")
    b = BUDGETS[args.budget]
    given = {f.name: getattr(args, f.name) for f in fields(Budget) if getattr(args, f.name, None) is not None}
    if given.get("backbone", b.backbone) != b.backbone and "backbone_path" not in given:
        given["backbone_path"] = None  # the budget's path holds the budget's backbone, not the one named
    b = replace(b, **given)
    for name in ("demos_per_task", "epochs", "batch_size", "workers"):
        if getattr(b, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(b, name)}.")
    for name in ("episodes_per_task", "pro_episodes", "max_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    init_states = _ints(getattr(args, "init_states", None), "--init-states", "initial states")
    if init_states is not None and args.episodes_per_task is not None:
        raise ConfigError(
            f"give --episodes-per-task ({args.episodes_per_task}) or --init-states ({args.init_states}), not both: "
            "--init-states names the stored states to run, --episodes-per-task the first n of them."
        )
    if init_states is not None and max(init_states) >= 50:
        raise ConfigError(f"--init-states {args.init_states}: each task stores 50 initial states, ids 0-49.")
    pretraining = encoder_settings(args, b.world_encoder)
    s = StudySettings(
        suites=suites,
        experiments=experiments,
        seeds=seeds,
        pro=pro,
        tasks=_ints(args.tasks, "--tasks", "task ids"),
        episodes_per_task=args.episodes_per_task,
        pro_episodes=args.pro_episodes,
        max_steps=args.max_steps,
        demos_per_task=b.demos_per_task,
        epochs=b.epochs,
        batch_size=b.batch_size,
        image_size=b.image_size,
        world_image_size=b.world_image_size,
        workers=b.workers,
        out=str(args.out),
        data=str(args.data or Path(args.out) / "data"),
        joint=bool(getattr(args, "joint", False)),
        init_states=init_states,
        lr_schedule=b.lr_schedule,
        backbone=b.backbone,
        backbone_path=b.backbone_path,
        backbone_dtype=b.backbone_dtype,
        world_encoder_path=b.world_encoder_path,
        world_encoder_dtype=b.world_encoder_dtype,
        dataset=getattr(args, "dataset", None),
        external_arms=external,
        arm_timeout_s=arm_timeout_s,
        **pretraining,
    )
    s = check_encoder_settings(s, args)
    from .launch import launch_settings

    s = replace(s, **launch_settings(args))
    from .real_models import check_models

    check_models(s, args)  # a real model's weights are found before any config names them
    configs = {  # a preset that needs more than a dataset (E2-Pretrained's encoder) fails here
        e: run_config(s, e, "libero_spatial", seeds[0], Path("unused"), Path("unused")) for e in experiments
    }
    if any(t >= 10 for t in s.tasks or ()):
        raise ConfigError(f"--tasks {args.tasks}: task ids must be in [0, 9] (each suite has 10 tasks).")
    if s.dataset is not None:
        from .public_data import check_dataset

        check_dataset(s, configs)
    if getattr(args, "shard", None) is not None:
        from .shards import parse_shard, study_runs

        s = replace(s, shard=parse_shard(args.shard, len(study_runs(s))))
    return s


def run_config(s: StudySettings, experiment: str, suite: str, seed: int, dataset: Path, run_dir: Path):
    """One run's config, built as the demo builds E0 and E2: the preset, then the study's sizes."""
    from ..config import build_config
    from .real_models import model_overrides
    from .world_encoder import encoder_overrides

    return build_config(
        {
            "dataset": str(dataset),
            "image_size": s.image_size,
            "world_image_size": s.world_image_size,
            "max_epochs": s.epochs,
            "batch_size": s.batch_size,
            "lr_schedule": s.lr_schedule,
            "num_threads": s.train_threads,
            "seed": seed,
            "output_dir": str(run_dir),
            "tensorboard": False,
            **encoder_overrides(s, experiment, dataset),
            **model_overrides(s, experiment),
        },
        preset=experiment,
    )


PRETRAIN_SETTINGS = ("pretrain_steps", "pretrain_batch_size", "pretrain_seed")


def encoder_settings(args, choice: str = "pretrained") -> dict:
    """--world-encoder (`choice`: the flag over the budget's) and the pretraining budget (flags over the budget's
    defaults), each checked."""
    from ..config import ConfigError
    from .real_models import REAL_ENCODER
    from .world_encoder import CHOICES, PRETRAIN_BUDGETS

    if choice not in (*CHOICES, REAL_ENCODER):
        raise ConfigError(f"--world-encoder {choice!r}: expected one of {', '.join((*CHOICES, REAL_ENCODER))}.")
    budget = PRETRAIN_BUDGETS[args.budget]
    values = {"pretrain_steps": budget.steps, "pretrain_batch_size": budget.batch_size, "pretrain_seed": 0}
    for name in PRETRAIN_SETTINGS:
        given = getattr(args, name, None)
        if given is not None:
            if given < (0 if name == "pretrain_seed" else 1):
                raise ConfigError(f"{_flag(name)} must be >= {0 if name == 'pretrain_seed' else 1}, got {given}.")
            values[name] = given
    return {"world_encoder": choice, **values}


def check_encoder_settings(s: StudySettings, args) -> StudySettings:
    """Refuse arms that would be one arm twice, and pretraining flags no arm uses (they would change nothing);
    the settings without the pretraining budget when no arm uses it."""
    from ..config import ConfigError
    from .real_models import REAL_ENCODER, uses_real_encoder
    from .world_encoder import check_pretraining, uses_pretrained

    if s.world_encoder == REAL_ENCODER and {"E2", "E2-Pretrained"} <= set(s.experiments):
        raise ConfigError(
            "--experiments names E2 and E2-Pretrained with --world-encoder vjepa2: E2 would use the real V-JEPA 2 and "
            "E2-Pretrained the study's pretrained tiny encoder, and the report's contrast E2 - E2-Pretrained reads "
            "'a pretrained encoder against the random one'; run them in separate studies, or give --world-encoder "
            "random to compare the tiny random and pretrained encoders."
        )
    if not uses_real_encoder(s):
        if getattr(args, "world_encoder_path", None) is not None:
            raise ConfigError(
                f"--world-encoder-path {args.world_encoder_path} given, but no arm of --experiments "
                f"{','.join(s.experiments)} uses the real V-JEPA 2 (--world-encoder {s.world_encoder}); expected "
                "--world-encoder vjepa2 with an E2-family arm, or no path."
            )
        s = replace(s, world_encoder_path=None, world_encoder_dtype="auto")
    if s.world_encoder == "pretrained" and {"E2", "E2-Pretrained"} <= set(s.experiments):
        raise ConfigError(
            "--experiments names E2 and E2-Pretrained, which are one arm under --world-encoder pretrained (E2 then "
            "uses the study's pretrained encoder); give --world-encoder random to compare the random encoder (E2) "
            "with the pretrained one (E2-Pretrained), or leave E2-Pretrained out."
        )
    if not uses_pretrained(s):
        given = [_flag(k) for k in PRETRAIN_SETTINGS if getattr(args, k, None) is not None]
        if given:
            raise ConfigError(
                f"{', '.join(given)} given, but no arm of --experiments {','.join(s.experiments)} uses a pretrained "
                f"world encoder (--world-encoder {s.world_encoder}); expected an E2-family arm with --world-encoder "
                "pretrained, or E2-Pretrained."
            )
        return replace(s, **dict.fromkeys(PRETRAIN_SETTINGS))
    check_pretraining(s)
    return s


def _read_settings(path: Path) -> dict:
    """The settings a study folder holds. A file that cannot be read as them stops the study: replacing it would
    retrain finished runs in place and overwrite the finished report."""
    from ..config import ConfigError

    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        old, why = None, f"{type(e).__name__}: {e}"
    else:
        why = f"it holds a JSON {type(old).__name__}"
    if not isinstance(old, dict):
        raise ConfigError(
            f"{path} is damaged ({why}); expected the JSON object of study settings this command writes. Restore "
            f"it (the study's command is in {path.parent / INVOCATIONS_FILE}), delete it to continue this folder with "
            "the current flags, or use another --out."
        )
    return old


def check_same_study(s: StudySettings) -> None:
    """Write <out>/study_settings.json, or refuse when it holds another study."""
    from ..config import ConfigError

    out = Path(s.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; expected a folder for the study.")
    path = out / SETTINGS_FILE
    mine = json.loads(json.dumps(s.identity()))
    if path.exists() or path.is_symlink():
        old = _read_settings(path)
        if not {"suites", "experiments", "seeds"} <= set(old):
            raise ConfigError(
                f"{path} is damaged: it lacks the study's suites, experiments or seeds (it holds {sorted(old)}); "
                f"expected the JSON object of study settings this command writes. Restore it (the study's command is "
                f"in {out / INVOCATIONS_FILE}), delete it to continue this folder with the current flags, or use "
                "another --out."
            )
        if old != mine:
            diff = sorted(k for k in set(old) | set(mine) if old.get(k) != mine.get(k))
            said = "; ".join(f"{_flag(k)}: {_shown(old, k)} there, {_shown(mine, k)} now" for k in diff)
            hint = ""
            if "world_encoder" in diff and "world_encoder" not in old:
                hint = (
                    " A study that names no --world-encoder ran its E2-family arms with the random encoder (or began "
                    "before pretraining was a stage): add --world-encoder random to continue it."
                )
            raise ConfigError(
                f"{out} holds a study with other settings ({said}); rerun with the same settings to continue it, "
                f"or use another --out.{hint}"
            )
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(mine, indent=2) + "\n")
    tmp.replace(path)


def _flag(key: str) -> str:
    if key == "external_arms":  # one setting of several flags: the arms and their stated conventions
        return "--arm and its conventions"
    return "--" + key.replace("_", "-")


def _shown(settings: dict, key: str) -> str:
    return repr(settings[key]) if key in settings else "not given"


def command_line(s: StudySettings) -> str:
    """The `world-modality study` command that runs, or continues, exactly this study."""
    import shlex

    parts = ["world-modality", "study", "--suites", ",".join(s.suites), "--experiments", ",".join(s.experiments)]
    parts += ["--seeds", ",".join(map(str, s.seeds))]
    if s.pro:
        parts += ["--pro", ",".join(s.pro)]
    if s.tasks is not None:
        parts += ["--tasks", ",".join(map(str, s.tasks))]
    if s.init_states is not None:
        from ..ids import format_ids

        parts += ["--init-states", format_ids(s.init_states)]
    sizes = {
        "--demos-per-task": s.demos_per_task,
        "--epochs": s.epochs,
        "--batch-size": s.batch_size,
        "--image-size": s.image_size,
        "--world-image-size": s.world_image_size,
        "--workers": s.workers,
        "--episodes-per-task": s.episodes_per_task,
        "--pro-episodes": s.pro_episodes,
        "--max-steps": s.max_steps,
    }
    parts += [str(v) for flag, value in sizes.items() if value is not None for v in (flag, value)]
    if s.joint:
        parts.append("--joint")
    if s.lr_schedule != "constant":
        parts += ["--lr-schedule", s.lr_schedule]
    for key in MODEL_SETTINGS:  # the embedded tiny models and generated data (the defaults) add nothing
        if getattr(s, key) != StudySettings.__dataclass_fields__[key].default:
            parts += [_flag(key), str(getattr(s, key))]
    if s.world_encoder != "pretrained":
        parts += ["--world-encoder", s.world_encoder]
    if s.pretrain_steps is not None:
        parts += ["--pretrain-steps", str(s.pretrain_steps), "--pretrain-batch-size", str(s.pretrain_batch_size)]
        parts += ["--pretrain-seed", str(s.pretrain_seed)]
    if s.train_processes != 1:
        parts += ["--train-processes", str(s.train_processes)]
    if s.train_threads:
        parts += ["--train-threads", str(s.train_threads)]
    if s.serve:
        parts.append("--serve")
    from .external_arms import command_flags

    parts += command_flags(s)
    if s.shard is not None:
        parts += ["--shard", f"{s.shard[0]}/{s.shard[1]}"]
    return shlex.join([*parts, "--out", s.out, "--data", s.data])


def log_invocation(s: StudySettings) -> None:
    """One line per run of the command into this folder: when, at which commit, with which command (a resumed
    study's stages may come from several)."""
    from ..provenance import code_commit

    utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    record = {"utc": utc, "commit": code_commit(), "command": command_line(s)}
    with (Path(s.out) / INVOCATIONS_FILE).open("a") as f:
        f.write(json.dumps(record) + "\n")


def invocations(out: Path) -> list[dict]:
    """Every logged run of the study in `out`, oldest first."""
    from ..jsonl import read_jsonl

    return read_jsonl(out / INVOCATIONS_FILE)[0]
