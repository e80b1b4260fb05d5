"""Self-supervised V-JEPA pretraining of the tiny world encoder on a dataset's own world-camera frames.

`world-modality pretrain-world --dataset DIR --out DIR` trains the embedded default's tiny `VJEPA2Model`
(`tiny_vjepa2_config`, the same seeded random init) as V-JEPA trains: each m-frame window of the world camera
(read from the frame cache at the pipeline's `--image_size`, then prepared exactly as the `vjepa2` loading path
prepares it) is cut into tubelet tokens; multi-block masks over the spatial token grid, shared across time,
hide some tubes; a context encoder sees only the visible tokens, and the model's own predictor regresses, at the
hidden positions, the layer-normed output of an EMA target encoder that saw the whole window (L1 loss). No pixel
is reconstructed and no label is read.

Only the training episodes of the pipeline's held-out split are used, so the episodes that offline evaluation
and `world-modality probe` hold out stay unseen by the encoder too.

The out folder holds `pretrain.json` (the settings; a rerun with others is refused), `losses.jsonl` and
`losses.png`, `checkpoints/step-N/` (safetensors + JSON, written atomically: a rerun of the same command
continues from the newest), and, at the end, a Hugging Face model folder: `config.json` + `model.safetensors`
(`save_pretrained`; the encoder is the EMA target, as V-JEPA evaluates) and `video_preprocessor_config.json`,
which `--world_encoder vjepa2 --world_encoder_path DIR` loads unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..config import ConfigError, DataConfig, WorldConfig
from ..optim_state import flatten_optimizer, unflatten_optimizer
from .encoder import VJEPA2Processing, tiny_vjepa2_config, vjepa2_resize_crop

FORMAT = "world-modality-pretrain/1"
DONE_MARKER = "COMPLETE"
SETTINGS_FILE = "pretrain.json"
LOSSES_FILE = "losses.jsonl"
PLOT_FILE = "losses.png"
PROCESSOR_FILE = "video_preprocessor_config.json"
KEEP_CHECKPOINTS = 2
# V-JEPA's two mask generators: many small blocks (short range) and two large ones (long range), each block a
# spatial rectangle of about `scale` of the grid with aspect ratio in ASPECT, repeated over every time step.
MASKS = ((8, 0.15), (2, 0.7))
ASPECT = (0.75, 1.5)
# Settings a rerun may change: they change how long or how fast it runs, not what a step computes. The
# schedule (linear warm-up, then constant) does not depend on `steps`, so N steps then M equal M steps.
RESUMABLE = ("steps", "save_every", "num_threads", "dataset")


@dataclass(frozen=True)
class PretrainSettings:
    dataset: str
    world_image_key: str = WorldConfig.world_image_key
    image_size: int = DataConfig.image_size  # side the frames are read at: the pipeline's --image_size
    world_image_size: int = WorldConfig.world_image_size  # the encoder's input side (its crop)
    latent_suffix: str = WorldConfig.latent_suffix  # m frames per window, "m<m>"
    frame_stride: int = WorldConfig.frame_stride
    val_fraction: float = DataConfig.val_fraction  # episodes held out, as the pipeline holds them out
    instruction_key: str = DataConfig.instruction_key
    episode_id_key: str = DataConfig.episode_id_key
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.04
    warmup_steps: int = 100
    ema: float = 0.996
    seed: int = 0
    save_every: int = 250
    num_threads: int = 0  # 0: half the cores, as training

    @property
    def num_frames(self) -> int:
        return int(self.latent_suffix[1:])

    def check(self) -> None:
        """Bad values named before any frame is decoded; the window and size rules are WorldConfig's own."""
        WorldConfig(latent_suffix=self.latent_suffix, frame_stride=self.frame_stride,
                    world_image_size=self.world_image_size, world_image_key=self.world_image_key)
        DataConfig(image_size=self.image_size, val_fraction=self.val_fraction)
        rules = {"steps": self.steps >= 1, "batch_size": self.batch_size >= 1, "warmup_steps": self.warmup_steps >= 0,
                 "save_every": self.save_every >= 1, "num_threads": self.num_threads >= 0,
                 "lr": math.isfinite(self.lr) and self.lr > 0,
                 "weight_decay": math.isfinite(self.weight_decay) and self.weight_decay >= 0,
                 "ema": math.isfinite(self.ema) and 0 <= self.ema < 1}
        for name, ok in rules.items():
            if not ok:
                raise ConfigError(f"`{name}` {getattr(self, name)!r} is out of range (steps, batch_size, save_every "
                                  f">= 1; warmup_steps, num_threads >= 0; lr > 0; weight_decay >= 0; 0 <= ema < 1).")
        cfg = tiny_vjepa2_config(self.num_frames, self.world_image_size)
        if self.num_frames % cfg.tubelet_size:
            raise ConfigError(f"`latent_suffix` {self.latent_suffix}: m must be a multiple of the encoder's "
                              f"tubelet_size {cfg.tubelet_size}.")
        if self.world_image_size % cfg.patch_size:
            raise ConfigError(f"`world_image_size` {self.world_image_size} must be a multiple of the encoder's "
                              f"patch_size {cfg.patch_size}.")


# -- masks ------------------------------------------------------------------------------------------------
def block_mask(rng: np.random.Generator, grid: int, num_blocks: int, scale: float) -> np.ndarray:
    """(grid, grid) bool, True = hidden: the union of `num_blocks` rectangles of about `scale` of the grid each,
    each side strictly shorter than the grid (as V-JEPA's block sizes), so that a visible token remains."""
    hidden = np.zeros((grid, grid), bool)
    for _ in range(num_blocks):
        aspect = math.exp(rng.uniform(math.log(ASPECT[0]), math.log(ASPECT[1])))
        area = scale * grid * grid
        h = min(max(1, round(math.sqrt(area * aspect))), max(1, grid - 1))
        w = min(max(1, round(math.sqrt(area / aspect))), max(1, grid - 1))
        top, left = rng.integers(0, grid - h + 1), rng.integers(0, grid - w + 1)
        hidden[top:top + h, left:left + w] = True
    return hidden


def sample_masks(rng: np.random.Generator, batch: int, grid: int, depth: int, num_blocks: int,
                 scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Context and target token indices, (B, Nc) and (B, Nt), sorted, in the encoder's token order
    (time-major, then rows, then columns). Each sample draws its own spatial mask, repeated over the `depth`
    time steps (tubes: a hidden patch stays hidden all clip long, so it cannot be copied from a neighbouring
    frame); every sample keeps the batch's smallest counts, dropping a random surplus (as V-JEPA's collator)."""
    ctx, tgt = [], []
    for _ in range(batch):
        for _ in range(100):
            hidden = block_mask(rng, grid, num_blocks, scale)
            if 0 < hidden.sum() < grid * grid:
                break
        else:  # a 1x1 grid: nothing can be both seen and predicted
            raise ValueError(f"a {grid}x{grid} token grid is too small to mask; use a larger world_image_size")
        tubes = np.tile(hidden.reshape(-1), depth)
        ctx.append(np.flatnonzero(~tubes))
        tgt.append(np.flatnonzero(tubes))

    def trim(sets: list[np.ndarray]) -> torch.Tensor:
        k = min(len(s) for s in sets)
        return torch.as_tensor(np.stack([np.sort(rng.choice(s, size=k, replace=False)) for s in sets]))

    return trim(ctx), trim(tgt)


# -- the model pieces -------------------------------------------------------------------------------------
def encode_context(encoder: nn.Module, pixels: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    """The context encoder: VJEPA2Encoder on the visible tokens only. `VJEPA2Model.forward(context_mask=...)`
    masks the encoder's output after a full pass, where every visible token has already attended to the hidden
    ones: the predictor could then copy the answer. Here the hidden tokens are dropped after the patch
    embedding, and the RoPE attention is given their positions (as the predictor gives its own)."""
    h = encoder.embeddings(pixels)
    h = torch.gather(h, 1, ctx.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
    for layer in encoder.layer:
        h = layer(h, ctx)[0]
    return encoder.layernorm(h)


def jepa_loss(model: nn.Module, target_encoder: nn.Module, pixels: torch.Tensor, ctx: torch.Tensor,
              tgt: torch.Tensor) -> tuple[torch.Tensor, float]:
    """L1 between the predictor's output at the hidden tokens and the target encoder's layer-normed output
    there; also the targets' spread (mean over features of their std over tokens and samples), which falls to 0
    if the representation collapses to a constant."""
    with torch.no_grad():
        target = target_encoder(pixel_values_videos=pixels).last_hidden_state
        n_tokens, width = target.shape[1:]
        target = F.layer_norm(target, (width,))
        target = torch.gather(target, 1, tgt.unsqueeze(-1).expand(-1, -1, width))
    h = encode_context(model.encoder, pixels, ctx)
    # The predictor gathers the context from a full-length sequence by `context_mask`: scatter it back there.
    full = h.new_zeros(h.shape[0], n_tokens, width).scatter(1, ctx.unsqueeze(-1).expand(-1, -1, width), h)
    pred = model.predictor(encoder_hidden_states=full, context_mask=[ctx], target_mask=[tgt]).last_hidden_state
    spread = float(target.reshape(-1, target.shape[-1]).std(0).mean())
    return (pred - target).abs().mean(), spread


def preprocess(frames: np.ndarray | torch.Tensor, processing: VJEPA2Processing) -> torch.Tensor:
    """uint8 (B, m, H, W, 3) -> normalised float (B, m, 3, S, S): what `WorldEncoder.preprocess` does for a
    `vjepa2` folder with this processing (shortest edge resized, center crop, ImageNet mean/std), so the encoder
    trains on exactly the inputs it will be given."""
    x = torch.as_tensor(np.asarray(frames))
    b, m, h, w, _ = x.shape
    s = processing.crop_size
    x = vjepa2_resize_crop(x.permute(0, 1, 4, 2, 3).reshape(b * m, 3, h, w), processing.shortest_edge, s)
    x = x.float().div_(255.0).reshape(b, m, 3, s, s)
    mean = torch.tensor(processing.mean).view(1, 1, 3, 1, 1)
    std = torch.tensor(processing.std).view(1, 1, 3, 1, 1)
    return (x - mean) / std


def build_model(settings: PretrainSettings) -> nn.Module:
    """The tiny VJEPA2Model at its default init (seeded as `build_world_encoder` seeds it), trainable."""
    from transformers import VJEPA2Model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = VJEPA2Model(tiny_vjepa2_config(settings.num_frames, settings.world_image_size))
    return model.float().train()


def lr_at(step: int, settings: PretrainSettings) -> float:
    """Linear warm-up, then constant: independent of `steps`, so a run extended later repeats an uninterrupted
    one (a cosine decay over `steps` would change every step's rate when steps change)."""
    if settings.warmup_steps and step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    return settings.lr


# -- checkpoints ------------------------------------------------------------------------------------------
def _identity(settings: PretrainSettings, fingerprint: str) -> dict[str, Any]:
    d = {k: v for k, v in dataclasses.asdict(settings).items() if k not in RESUMABLE}
    return {**d, "dataset_fingerprint": fingerprint}


def _check_out(out: Path, identity: dict[str, Any]) -> None:
    """Refuse a folder that is a file, holds something else, or a pretraining with other settings."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; expected a folder for the pretrained encoder.")
    path = out / SETTINGS_FILE
    if not path.exists():
        stray = [p.name for p in out.iterdir()] if out.is_dir() else []
        if stray:
            raise ConfigError(f"--out {out} is not empty ({', '.join(sorted(stray)[:5])}) and holds no "
                              f"{SETTINGS_FILE}; expected a new folder or one that pretrain-world wrote.")
        return
    try:
        saved = json.loads(path.read_text())["identity"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is not a pretrain-world settings file ({e}); use another --out.") from None
    diff = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
    if diff:
        details = ", ".join(f"{k}: saved {saved.get(k)!r} vs now {identity.get(k)!r}" for k in diff[:6])
        raise ConfigError(f"--out {out} holds a pretraining with other settings ({details}); only "
                          f"{', '.join(RESUMABLE)} may change on a rerun. Use another --out.")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def checkpoints(out: Path) -> list[Path]:
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if p.is_dir() and (p / DONE_MARKER).exists())


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The training checkpoints' flattening, under an "optim." prefix: these tensors share a file with the model's."""
    tensors, meta = flatten_optimizer(opt)
    return {f"optim.{k}": v for k, v in tensors.items()}, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    return unflatten_optimizer({k.removeprefix("optim."): v for k, v in tensors.items() if k.startswith("optim.")}, meta)


def save_checkpoint(out: Path, step: int, model: nn.Module, target: nn.Module, opt: torch.optim.Optimizer,
                    identity: dict[str, Any]) -> Path:
    """checkpoints/step-N: written into a temporary sibling folder with a COMPLETE marker, then renamed, so a
    kill mid-write leaves the previous checkpoint the newest; older ones beyond KEEP_CHECKPOINTS are removed."""
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # left by a writer killed mid-write: never loaded
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"target.{k}": v.detach().cpu().contiguous() for k, v in target.state_dict().items()})
    opt_tensors, opt_meta = _flatten_optimizer(opt)
    save_file({**tensors, **opt_tensors}, str(tmp / "state.safetensors"), metadata={"format": FORMAT})
    (tmp / "state.json").write_text(json.dumps({"format": FORMAT, "step": step, "identity": identity,
                                                "optimizer": opt_meta}, indent=1) + "\n")
    (tmp / DONE_MARKER).write_text("ok\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoints(out)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model: nn.Module, target: nn.Module, opt: torch.optim.Optimizer,
                    identity: dict[str, Any]) -> int:
    """Restore weights, target and optimizer; returns the step. A checkpoint of other settings is refused."""
    try:
        meta = json.loads((path / "state.json").read_text())
        tensors = load_file(str(path / "state.safetensors"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, SafetensorError) as e:
        raise ConfigError(f"pretrain checkpoint {path} is unreadable ({e}); delete it to resume from an older one "
                          f"or start over in another --out.") from None
    if meta.get("identity") != identity:
        raise ConfigError(f"pretrain checkpoint {path} was written with other settings; use another --out.")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    target.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("target.")}, strict=True)
    opt.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    return int(meta["step"])


def read_losses(out: Path) -> list[dict]:
    path = out / LOSSES_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill: the step is logged again on resume
            continue
    return rows


def _keep_losses_upto(out: Path, step: int) -> None:
    """Steps past the resumed checkpoint were lost with the killed process: they are run, and logged, again."""
    rows = [r for r in read_losses(out) if r.get("step", 0) <= step]
    _atomic_write_text(out / LOSSES_FILE, "".join(json.dumps(r) + "\n" for r in rows))


def plot_losses(out: Path) -> Path | None:
    """losses.png: the loss per step and its moving average, and the targets' spread (collapse shows as 0)."""
    rows = read_losses(out)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    window = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax.plot(steps, loss, lw=0.6, alpha=0.4, label="per step")
    ax.plot(steps[window - 1:], smooth, lw=1.6, label=f"mean of {window}")
    ax.set(xlabel="step", ylabel="L1 to layer-normed targets", title="V-JEPA loss")
    ax.legend()
    ax2.plot(steps, [r["target_std"] for r in rows], lw=1.0)
    ax2.set(xlabel="step", ylabel="std over tokens", title="target spread (0 = collapse)", ylim=(0, None))
    fig.tight_layout()
    path = out / PLOT_FILE
    tmp = out / f".{PLOT_FILE}.{os.getpid()}.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def processor_config(crop: int) -> dict[str, Any]:
    """The VJEPA2VideoProcessor config of a checkpoint with this crop (what `read_processing` reads back)."""
    p = VJEPA2Processing.for_crop(crop)
    return {"crop_size": {"height": crop, "width": crop}, "size": {"shortest_edge": p.shortest_edge},
            "do_resize": True, "do_center_crop": True, "do_rescale": True, "do_normalize": True,
            "do_convert_rgb": True, "resample": 2, "rescale_factor": 1 / 255, "image_mean": list(p.mean),
            "image_std": list(p.std), "video_processor_type": "VJEPA2VideoProcessor"}


def save_final(out: Path, model: nn.Module, target: nn.Module, settings: PretrainSettings) -> None:
    """The HF folder: the EMA target as the encoder (V-JEPA evaluates its target encoder), the predictor as
    trained. Saved into a temporary folder, then each file renamed into `out`, config.json last."""
    final = copy.deepcopy(model)
    final.encoder.load_state_dict(target.state_dict())
    tmp = out / f".tmp-final-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar for writing one small shard is noise beside the run's own
    try:
        final.save_pretrained(tmp)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    (tmp / PROCESSOR_FILE).write_text(json.dumps(processor_config(settings.world_image_size), indent=2) + "\n")
    names = sorted(p.name for p in tmp.iterdir())
    for name in sorted(names, key=lambda n: n == "config.json"):
        os.replace(tmp / name, out / name)
    tmp.rmdir()


# -- the job ----------------------------------------------------------------------------------------------
@dataclass
class PretrainResult:
    out: Path
    steps: int
    resumed_from: int
    losses: list[float]
    seconds_per_step: float | None


def train_windows(settings: PretrainSettings, dataset) -> np.ndarray:
    """(N, m) frame rows of every window of the training episodes (the pipeline's split)."""
    from ..data.windows import WindowSpec, past_frame_rows
    # The pipeline's split, so the episodes it holds out are held out here too (pipeline sits above world/;
    # imported here, not at module level, to keep world/ importable without it).
    from ..data.split import split_episodes

    spec = WindowSpec(num_frames=settings.num_frames, frame_stride=settings.frame_stride)
    train_eps, _ = split_episodes(dataset, settings.val_fraction)
    rows = dataset.rows_of(train_eps)
    return past_frame_rows(dataset.episodes, spec)[rows]


def pretrain(settings: PretrainSettings, out: str | Path, progress: bool = True,
             log: Callable[[str], None] = print) -> PretrainResult:
    """Train (or continue) into `out`; see the module docstring. Returns the losses of the steps run now."""
    from ..data.lerobot import load_dataset

    settings.check()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; expected a folder for the pretrained encoder.")
    dataset = load_dataset(settings.dataset, instruction_key=settings.instruction_key,
                           episode_id_key=settings.episode_id_key)
    dataset.progress = progress
    if settings.world_image_key not in dataset.image_keys:
        raise ConfigError(f"dataset {dataset.root} has no camera {settings.world_image_key!r}; its cameras are "
                          f"{dataset.image_keys}.")
    identity = _identity(settings, dataset.fingerprint())
    _check_out(out, identity)
    found = checkpoints(out)
    done = int(found[-1].name.split("-")[1]) if found else 0
    if done > settings.steps:
        raise ConfigError(f"--out {out} already holds {done} steps, more than --steps {settings.steps}; "
                          f"ask for at least {done} steps, or use another --out.")
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(out / SETTINGS_FILE, json.dumps({"format": FORMAT, "identity": identity,
                                                        "settings": dataclasses.asdict(settings)}, indent=2) + "\n")
    torch.set_num_threads(settings.num_threads or max(1, (os.cpu_count() or 2) // 2))

    windows = train_windows(settings, dataset)
    frames = dataset.images(settings.world_image_key, settings.image_size)  # the frame cache's memmap
    processing = VJEPA2Processing.for_crop(settings.world_image_size)
    model = build_model(settings)
    target = copy.deepcopy(model.encoder).requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    start = load_checkpoint(found[-1], model, target, opt, identity) if found else 0
    _keep_losses_upto(out, start)
    grid = settings.world_image_size // model.config.patch_size
    depth = settings.num_frames // model.config.tubelet_size
    log(f"[pretrain-world] {len(windows)} windows (m={settings.num_frames}, stride={settings.frame_stride}) of "
        f"{settings.world_image_key} from the training episodes of {dataset.root}; {grid}x{grid}x{depth} tokens; "
        + (f"resuming at step {start}/{settings.steps}" if start else f"{settings.steps} steps"))

    losses: list[float] = []
    times: list[float] = []
    bar = tqdm(total=settings.steps, initial=start, desc="pretrain-world", unit="step", disable=not progress,
               mininterval=0.5)
    with open(out / LOSSES_FILE, "a") as log_file:
        for step in range(start, settings.steps):
            t0 = time.perf_counter()
            # Every step's draws come from (seed, step): a resumed run repeats the uninterrupted one exactly.
            rng = np.random.default_rng([settings.seed, step])
            pick = rng.choice(len(windows), size=settings.batch_size, replace=len(windows) < settings.batch_size)
            pixels = preprocess(frames[windows[pick]], processing)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, settings)
            terms, spreads = [], []
            for num_blocks, scale in MASKS:
                ctx, tgt = sample_masks(rng, settings.batch_size, grid, depth, num_blocks, scale)
                loss, spread = jepa_loss(model, target, pixels, ctx, tgt)
                terms.append(loss)
                spreads.append(spread)
            loss = torch.stack(terms).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"pretrain-world: the loss became {float(loss)} at step {step}; the last "
                                         f"finite checkpoint is kept in {out / 'checkpoints'}. Try a lower --lr.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():  # the target follows the context encoder slowly (EMA), never by gradient
                for pt, ps in zip(target.parameters(), model.encoder.parameters()):
                    pt.mul_(settings.ema).add_(ps.detach(), alpha=1 - settings.ema)
            times.append(time.perf_counter() - t0)
            value = loss.item()
            losses.append(value)
            log_file.write(json.dumps({"step": step + 1, "loss": value, "target_std": float(np.mean(spreads)),
                                       "lr": lr_at(step, settings)}) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", ms_per_step=f"{1000 * np.median(times[-50:]):.0f}")
            if (step + 1) % settings.save_every == 0 or step + 1 == settings.steps:
                log_file.flush()
                save_checkpoint(out, step + 1, model, target, opt, identity)
                plot_losses(out)
    bar.close()
    save_final(out, model, target, settings)
    plot_losses(out)
    per_step = float(np.median(times)) if times else None
    if times:
        log(f"[pretrain-world] steps {start + 1}-{settings.steps}: {sum(times):.1f} s, "
            f"{1000 * per_step:.0f} ms/step (median, batch {settings.batch_size}); loss {losses[0]:.4f} -> "
            f"{losses[-1]:.4f}")
    else:
        log(f"[pretrain-world] {out} already holds all {settings.steps} steps; its model folder was rewritten")
    log(f"[pretrain-world] encoder folder: {out} (use --world_encoder vjepa2 --world_encoder_path {out}); "
        f"loss curve: {out / PLOT_FILE}")
    return PretrainResult(out, settings.steps, start, losses, per_step)
