"""The worker side of closed-loop evaluation (`closed_loop.evaluate`): each simulator process holds one policy
runner, local (the checkpoint loaded), remote (`RemoteRunner`, asking a policy server) or an external arm's
(`ExternalRunner`), and one `LiberoEnv`, and runs one episode per job; an exception, a lost, hung or garbled server
included, ends the episode as an error.
Each record's `timing` adds to the episode's split (`rollout.run_episode`) the job's seconds in this process
(`job_s`: with a simulator built for a new task), the seconds it waited since its previous job or its start-up
(`idle_s`: the parent's turn, both ways of the pipe) and, on its first job, the start-up itself (`startup_s`)."""

from __future__ import annotations

import time

_STATE: dict = {}


def worker_init(settings: dict) -> None:
    start = time.perf_counter()
    try:
        _init(settings)
    finally:
        _STATE["startup_s"] = time.perf_counter() - start
        _STATE["job_end"] = time.perf_counter()


def _init(settings: dict) -> None:
    import torch

    from ..inference.runner import PolicyRunner
    from ..policy.device import resolve_device

    _STATE["settings"] = settings
    if settings.get("policy_server") or settings.get("arm"):
        torch.set_num_threads(1)
        return  # connected by the first job, so an unreachable server is that episode's error, not the run's
    if resolve_device(settings["device"]).type == "cpu":
        torch.set_num_threads(1)  # one core per simulator process; threads would only contend
    _STATE["runner"] = PolicyRunner(
        settings["checkpoint"],
        settings["memory"],
        seed=settings["seed"],
        device=settings["device"],
        temporal_ensemble=settings.get("temporal_ensemble"),
    )


def _runner():
    if "runner" not in _STATE:
        st = _STATE["settings"]
        if st.get("arm"):
            from ..inference.arm import ArmSpec
            from ..inference.external import ExternalRunner

            _STATE["runner"] = ExternalRunner(
                st["arm_address"],
                ArmSpec.from_dict(st["arm"]),
                timeout_s=st["arm_timeout_s"],
                temporal_ensemble=st.get("temporal_ensemble"),
            )
        else:
            from ..inference.remote import RemoteRunner

            _STATE["runner"] = RemoteRunner(st["policy_server"], temporal_ensemble=st.get("temporal_ensemble"))
    return _STATE["runner"]


def run_job(task_id: int, init_index: int, record_video: bool) -> dict:
    from ..sim.env import LiberoEnv
    from .rollout import run_episode

    start = time.perf_counter()
    idle = start - _STATE["job_end"] if "job_end" in _STATE else None
    st = _STATE["settings"]
    env = _STATE.get("env")
    task = getattr(env, "task", None) if env is not None and env.task_id == task_id else None
    try:
        runner = _runner()
        if env is None or env.task_id != task_id:
            if env is not None:
                _STATE.pop("env", None)
                env.close()
            env = _STATE["env"] = LiberoEnv(
                st["suite"],
                task_id,
                image_size=runner.cfg.data.image_size,
                seed=st["seed"],
                max_steps=st["max_steps"],
                camera_sizes=runner.render_sizes,
                render_profile=runner.render_profile,
            )
        task = env.task
        seed = st["seed"] * 100_003 + task_id * 1_000 + init_index
        result = run_episode(env, runner, init_index, st["replan_every"], seed=seed, record_video=record_video)
        result["outcome"] = "success" if result["success"] else "failure"
    except Exception as e:  # an error, not the policy's failure: kept apart, retried
        _STATE.pop("env", None)
        result = {
            "outcome": "error",
            "success": None,
            "error": f"{type(e).__name__}: {e}",
            "steps": None,
            "frames": None,
            "failure": None,
            "seconds": None,
        }
    result.update(task_id=task_id, init_index=init_index, task=task)
    _STATE["job_end"] = end = time.perf_counter()
    timing = result.setdefault("timing", {})
    timing.update(job_s=round(end - start, 4), idle_s=None if idle is None else round(idle, 4))
    if "startup_s" in _STATE:
        timing["startup_s"] = round(_STATE.pop("startup_s"), 4)
    return result
