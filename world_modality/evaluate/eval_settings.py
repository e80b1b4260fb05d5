"""What one closed-loop evaluation is asked to do (`EvalSettings`), checked before the checkpoint loads or the
simulator starts. Apart from closed_loop.py, which runs it, so the folder code below it can name the type."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvalSettings:
    checkpoint: str | None = None  # this project's policy; None with `arm`
    suite: str = "libero_spatial"
    tasks: tuple[int, ...] | None = None  # default: every task of the suite
    n_episodes: int | None = None  # per task: initial states 0..n-1; default: all (50), the public protocol
    init_states: tuple[int, ...] | None = None  # per task: these stored initial states (e.g. 10..49), not 0..n-1
    memory: str | None = None  # default: the checkpoint's training memory mode (evaluate() resolves it)
    replan_every: int | None = None  # frames between replans; default chunk_size // 2
    temporal_ensemble: float | None = None  # ACT's exponential weight m over overlapping chunks; None: off
    workers: int = 2
    seed: int = 7  # env seed, as in the public LIBERO evaluation scripts
    video: int = 0  # rollouts per task saved as mp4
    shard: tuple[int, int] = (0, 1)
    out: str | None = None
    max_steps: int | None = None  # control steps per episode; default: the suite's public limit
    device: str = "auto"  # where each worker's policy runs: auto (CUDA when present), cpu, cuda, cuda:N
    episode_timeout_s: float | None = 1800  # a hung worker is killed and its episode retried once; None: no limit
    allow_train_overlap: bool = False  # evaluate starts that produced training data (flagged), instead of refusing
    policy_server: str | None = None  # HOST:PORT of `world-modality serve` with this checkpoint; None: load it
    render_profile: str | None = (
        None  # camera settings (sim/render_profile.py); None: the training data's, the only one allowed
    )
    # An external policy instead of a checkpoint: its spec (`inference.arm.ArmSpec.to_dict()`) and server address.
    arm: dict | None = None
    arm_address: str | None = None
    arm_timeout_s: float = 120.0  # seconds a reply may take before the request ends as an error
    train_starts: str | None = None  # an arm's training data (dataset folder or start-states file); None: unchecked

    def __post_init__(self) -> None:
        # Checked before the checkpoint loads or the simulator starts, so a typo fails at once.
        from ..config import ConfigError, check_memory_mode
        from ..policy.device import resolve_device
        from ..sim.suites import base_suite

        self._check_policy()
        i, n = self.shard
        if not (n >= 1 and 0 <= i < n):
            raise ConfigError(f"shard must be i/n with 0 <= i < n, got {i}/{n}.")
        if self.n_episodes is not None and self.n_episodes < 1:
            raise ConfigError(f"n_episodes must be >= 1 (or left out for all initial states), got {self.n_episodes}.")
        if self.init_states is not None:
            if self.n_episodes is not None:
                from ..ids import format_ids

                raise ConfigError(
                    f"give --n_episodes ({self.n_episodes}) or --init_states ({format_ids(self.init_states)}), not "
                    "both: --init_states names the stored initial states to run, --n_episodes the first n of them."
                )
            if not self.init_states or any(k < 0 for k in self.init_states):
                raise ConfigError(f"--init_states must name initial states >= 0, got {self.init_states}.")
            if len(set(self.init_states)) != len(self.init_states):
                raise ConfigError(f"--init_states names a state twice: {self.init_states}.")
        if self.tasks is not None and not self.tasks:
            raise ConfigError("tasks is empty: name at least one task id (e.g. 0,1 or 0-9), or leave it out for all.")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}.")
        if self.replan_every is not None and self.replan_every < 1:
            raise ConfigError(
                f"replan_every must be >= 1 frame (or left out for chunk_size // 2), got {self.replan_every}."
            )
        if self.temporal_ensemble is not None:
            from ..inference.episode import check_temporal_ensemble

            try:
                check_temporal_ensemble(self.temporal_ensemble)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(
                f"max_steps must be >= 1 control step (or left out for the suite's limit), got {self.max_steps}."
            )
        if self.video < 0:
            raise ConfigError(f"video must be >= 0 rollouts per task, got {self.video}.")
        if self.episode_timeout_s is not None and not self.episode_timeout_s > 0:
            raise ConfigError(
                f"episode_timeout_s must be positive seconds or None (no limit), got {self.episode_timeout_s}."
            )
        if self.memory is not None:
            check_memory_mode(self.memory, "closed-loop")
        if self.render_profile is not None:
            from ..sim.render_profile import render_profile

            try:
                render_profile(self.render_profile)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        try:
            base_suite(self.suite)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        resolve_device(self.device)
        if self.policy_server is not None:
            from ..inference.remote import parse_address

            try:
                parse_address(self.policy_server)
            except ValueError as e:
                raise ConfigError(str(e)) from None

    def _check_policy(self) -> None:
        """Exactly one policy: a checkpoint (served or loaded) or an external arm, with only the settings that mean
        something for it."""
        from ..config import ConfigError

        if (self.checkpoint is None) == (self.arm is None):
            raise ConfigError(
                "an evaluation needs --checkpoint (a policy of this project) or --arm NAME=ws://HOST:PORT (an external "
                f"policy server), exactly one; got {'both' if self.arm is not None else 'neither'}."
            )
        if self.arm is None:
            for flag, value in (("arm_address", self.arm_address), ("--train_starts", self.train_starts)):
                if value is not None:
                    raise ConfigError(
                        f"{flag} {value!r} is for an external arm (--arm); a checkpoint records its own training data "
                        "and is served by --policy_server."
                    )
            return
        from ..inference.arm import ArmSpec, ArmSpecError, check_address

        try:
            spec = ArmSpec.from_dict(self.arm)
            check_address(self.arm_address)
        except ArmSpecError as e:
            raise ConfigError(str(e)) from None
        # These belong to this project's policies; an arm states its own (replanning, render settings) in its spec.
        for flag, value, why in (
            ("--memory", self.memory, "an external policy has no world-memory mode"),
            ("--replan_every", self.replan_every, "the arm's spec states replan_every"),
            ("--policy_server", self.policy_server, "the arm names its own server"),
            ("--device", None if self.device == "auto" else self.device, "the arm runs on its own server"),
        ):
            if value is not None:
                raise ConfigError(f"{flag} {value!r} does not apply to arm {spec.name!r}: {why}.")
        if self.render_profile is not None and self.render_profile != spec.render_profile:
            raise ConfigError(
                f"--render_profile {self.render_profile!r} differs from arm {spec.name!r}'s stated render_profile "
                f"{spec.render_profile!r}; an arm is evaluated with the camera settings it states. Leave the flag out."
            )
        if not (isinstance(self.arm_timeout_s, (int, float)) and self.arm_timeout_s > 0):
            raise ConfigError(f"--arm_timeout must be positive seconds, got {self.arm_timeout_s!r}.")
