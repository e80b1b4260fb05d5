"""A few rollout videos per arm kept beside the numbers: each arm's first training seed films its first task's first
two evaluated starts on every standard suite; those mp4s stay out of the .gitignore that keeps the large artifacts
out of a results repository, and the report lists them."""

from __future__ import annotations

from pathlib import Path

PER_ARM = 2  # starts filmed per arm and suite: a look at how it acts, not a sample of how often it succeeds


def filmed_states(s) -> list[int]:
    from .held_out import evaluated_states

    return evaluated_states(s)[:PER_ARM]


def first_task(s) -> int:
    return s.tasks[0] if s.tasks else 0


def videos_to_film(s, seed: int, suite: str) -> int:
    """EvalSettings.video of one evaluation: it films each task's states below it, so one past the last filmed state
    films exactly the first PER_ARM evaluated states (every task's: the evaluation films per task, and rollouts
    record frames the policy renders anyway, so the others cost only their encoding). 0: nothing filmed."""
    if seed != s.seeds[0] or suite not in s.suites:
        return 0
    return filmed_states(s)[-1] + 1


def video_path(s, train_suite: str, experiment: str, seed: int, suite: str) -> Path:
    """The run's videos folder under the study folder (relative: a results folder moves between machines)."""
    return Path("runs") / train_suite / f"{experiment.lower()}-seed{seed}" / "eval" / suite / "videos"


def kept_videos(s, train_suite: str, experiment: str, seed: int, suite: str, tasks, episodes: list[dict]) -> list[dict]:
    """The kept videos among an evaluation's finished episodes: its first task's filmed starts, each {"suite",
    "task_id", "init_index", "success", "path"} with the path under the study folder, in start order."""
    if videos_to_film(s, seed, suite) == 0 or not tasks:
        return []
    task, states = list(tasks)[0], filmed_states(s)
    root = video_path(s, train_suite, experiment, seed, suite).parent
    kept = [
        {
            "suite": suite,
            "task_id": e["task_id"],
            "init_index": e["init_index"],
            "success": bool(e.get("success")),
            "path": str(root / e["video"]),
        }
        for e in episodes
        if e.get("video") and e.get("task_id") == task and e.get("init_index") in states
    ]
    return sorted(kept, key=lambda v: v["init_index"])


def ignore_exceptions(s, runs: list[tuple]) -> list[str]:
    """.gitignore lines that keep the chosen videos of `runs` (the evaluation names a video
    task<TT>_init<KK>_<ok|fail>.mp4); they follow the rule that ignores every other video."""
    lines = []
    for train_suite, experiment, seed in runs:
        suites = s.suites if train_suite == "joint" else (train_suite,)
        for suite in suites:
            if videos_to_film(s, seed, suite) == 0:
                continue
            folder = video_path(s, train_suite, experiment, seed, suite).as_posix()
            lines += [f"!{folder}/task{first_task(s):02d}_init{k:02d}_*.mp4" for k in filmed_states(s)]
    return lines


def render_videos(videos: list[dict]) -> list[str]:
    """The report's list of kept videos (kept_videos' records with their "experiment" and "seed"), by arm."""
    by_arm: dict[str, list[dict]] = {}
    for v in videos:
        by_arm.setdefault(v["experiment"], []).append(v)
    if not by_arm:
        return []
    lines = [
        "",
        "## Rollout videos",
        "",
        f"Each arm's first training seed, its first task's first {PER_ARM} evaluated starts on each standard suite "
        "(agent view and wrist; the instruction and outcome are written on the frames). A look at how an arm acts, "
        "not evidence of how often it succeeds: the tables are.",
        "",
    ]
    for arm, videos in by_arm.items():
        shown = [
            f"[{v['suite']} task {v['task_id']}, state {v['init_index']}, seed {v['seed']}: "
            f"{'success' if v['success'] else 'failure'}]({v['path']})"
            for v in videos
        ]
        lines.append(f"- {arm}: " + "; ".join(shown))
    return lines
