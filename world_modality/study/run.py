"""Run a whole study, or one shard of it: check the settings, run (or resume) every stage, write the report inputs
and, for a whole study, report.md and study.json."""

from __future__ import annotations

from .settings import StudySettings, check_same_study, log_invocation


def run_study(s: StudySettings) -> int:
    """0 when every stage ran and no episode ended in an error; 1 otherwise (a rerun of the same command resumes)."""
    from .artifacts import Artifacts
    from .external_arms import check_servers
    from .shards import check_same_shard, run_name, shard_runs, shard_text, write_inputs
    from .stages import run_stages, shard_plan
    from .tables import write_report

    check_servers(s, shard_runs(s, s.shard))  # an arm's server that does not answer is refused before anything runs
    check_same_study(s)
    runs = check_same_shard(s)
    log_invocation(s)
    if s.tasks is None:
        from ..sim.suites import num_tasks

        def tasks_of(suite: str) -> list[int]:
            return list(range(num_tasks(suite)))
    else:

        def tasks_of(suite: str) -> list[int]:
            return list(s.tasks)

    run = run_stages(s, tasks_of, shard_plan(s, runs), Artifacts(s.out))
    write_inputs(s, runs, run)
    errors = sum(len(r.get("errors", [])) for r in run["evals"])
    if s.shard is None:
        res = write_report(s, run)
        print(f"[study] report: {s.out}/report.md, numbers: {s.out}/study.json")
        for suite, tasks in res["tasks_without_demonstrations"].items():
            print(f"[study] {suite}: no demonstration for tasks {tasks}")
    else:
        print(
            f"[study] shard {shard_text(s.shard)} ran {', '.join(map(run_name, runs))}; its report inputs are in "
            f"{s.out}/report_inputs.json: `world-modality study merge SHARD_FOLDER... --out DIR` writes the report"
        )
    problems = []
    if errors:
        problems.append(f"{errors} closed-loop episode(s) ended in an error (not counted in any rate)")
    if run["failed"]:
        problems.append(f"{len(run['failed'])} stage(s) failed: {'; '.join(run['failed'])}")
    if problems:
        print(f"[study] ERROR: {'; '.join(problems)}; run the same command again to retry them.")
        return 1
    return 0
