"""The `world-modality` subcommands' handlers: each takes the parsed arguments and returns the exit status."""

from __future__ import annotations

from pathlib import Path

from .config import ConfigError, config_from_args
from .ids import parse_ids


def cmd_train(args) -> int:
    from .train import train

    final = train(config_from_args(args))
    print(f"[train] final checkpoint: {final}")
    return 0


def cmd_encode(args) -> int:
    from .pipeline import prepare_data
    from .policy.factory import world_encoder_from_config

    cfg = config_from_args(args)
    if not cfg.data.dataset:
        raise ConfigError("--dataset PATH is required: the root of a LeRobot v3-layout dataset.")
    encoder = world_encoder_from_config(cfg)
    data = prepare_data(cfg, encoder)
    c = data.latents
    print(
        f"[encode] {c.n_frames} frames -> {c.latent_dim}-d latents with {encoder.encoder_id} "
        f"(m={cfg.world.num_frames}, stride={cfg.world.frame_stride}); cache: {c.path}"
    )
    return 0


def cmd_eval_offline(args) -> int:
    from .analysis.offline import check_output_file, check_settings, evaluate_offline, format_table, write_result
    from .policy.checkpoint_store import resolve_checkpoint
    from .policy.device import resolve_device

    # Every setting, and where the result goes, is checked before the checkpoint or dataset loads.
    check_settings(args.batch_size, args.memory, args.split)
    resolve_device(args.device)
    ckpt = resolve_checkpoint(args.checkpoint)
    out = Path(args.out) if args.out else ckpt.parent.parent / f"eval_offline_{args.split}.json"
    check_output_file(out)
    result = evaluate_offline(
        ckpt,
        dataset=args.dataset,
        batch_size=args.batch_size,
        modes=args.memory,
        seed=args.seed,
        split=args.split,
        device=args.device,
    )
    print(format_table(result))
    write_result(result, out)
    print(f"[eval-offline] wrote {out}")
    return 0


def cmd_generate(args) -> int:
    from .sim.generate import generate

    out = generate(
        args.suite,
        parse_ids(args.tasks),
        args.episodes_per_task,
        args.out,
        image_size=args.image_size,
        workers=args.workers,
        seed=args.seed,
        job_timeout_s=args.job_timeout or None,
        render_profile=args.render_profile,
    )
    print(f"[generate] dataset: {out} (annotations: {out / 'coc.jsonl'})")
    return 0


def cmd_report(args) -> int:
    from .analysis.report import write_report

    result = write_report(args.run_dirs, args.out, compare=tuple(args.compare) if args.compare else None)
    paired = result.get("paired") or result.get("paired_pooled")
    if paired:
        lo, hi = paired["diff_ci"]
        print(
            f"[report] {paired['b']} - {paired['a']} over {paired['n_pairs']} paired episodes: "
            f"{100 * paired['diff']:+.1f} pts (95% CI {100 * lo:+.1f} to {100 * hi:+.1f}), "
            f"{paired['test']} p = {paired['p']:.3g}"
        )
    print(f"[report] {result['report_md']}\n[report] {result['report_html']}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(quick=args.quick, out=args.out)


def cmd_study(args) -> int:
    from .study.run import run_study
    from .study.settings import settings_from_args

    return run_study(settings_from_args(args))


def cmd_pretrain_world(args) -> int:
    import dataclasses

    from .world.pretrain import PretrainSettings, pretrain

    fields = {f.name for f in dataclasses.fields(PretrainSettings)}
    pretrain(PretrainSettings(**{k: v for k, v in vars(args).items() if k in fields}), args.out)
    return 0


def cmd_probe(args) -> int:
    from .analysis.offline import check_output_file
    from .analysis.probe import format_table, probe_dataset, probe_run, write_result
    from .config import FIELD_SECTION

    given = sorted(k for k in vars(args) if k in FIELD_SECTION)  # config flags default to absent
    if args.checkpoint:
        other = [k for k in given if k not in ("dataset", "seed")]
        if other or args.preset or args.config:
            raise ConfigError(
                f"--checkpoint probes the run with its own config; only --dataset and --seed may be "
                f"given beside it, got {['--' + k for k in other] or '--preset/--config'}."
            )
        from .policy.checkpoint_store import resolve_checkpoint

        out = Path(args.out) if args.out else resolve_checkpoint(args.checkpoint).parent.parent / "probe.json"
        check_output_file(out)
        result = probe_run(
            args.checkpoint, dataset=getattr(args, "dataset", None), seed=getattr(args, "seed", 0), device=args.device
        )
    else:
        cfg = config_from_args(args)
        if not cfg.data.dataset:
            raise ConfigError(
                "--dataset PATH (a dataset with observation.environment_state) or --checkpoint RUN is required."
            )
        if not args.out:
            raise ConfigError(
                "--out FILE.json is required with --dataset (with --checkpoint it defaults to <run>/probe.json)."
            )
        out = Path(args.out)
        check_output_file(out)
        from .analysis.probe import require_env_state
        from .policy.factory import world_encoder_from_config

        require_env_state(cfg.data.dataset)  # before the encoder loads or any frame is decoded
        result = probe_dataset(cfg, world_encoder_from_config(cfg))
    print(format_table(result))
    write_result(result, out)
    print(f"[probe] wrote {out}")
    return 0
