"""Run a whole study: check the settings, run (or resume) every stage, write report.md and study.json."""

from __future__ import annotations

from .settings import StudySettings, check_same_study, log_invocation


def run_study(s: StudySettings) -> int:
    """0 when every stage ran and no episode ended in an error; 1 otherwise (a rerun of the same command resumes)."""
    from .stages import run_stages
    from .tables import write_report

    check_same_study(s)
    log_invocation(s)
    if s.tasks is None:
        from ..sim.suites import num_tasks

        def tasks_of(suite: str) -> list[int]:
            return list(range(num_tasks(suite)))
    else:

        def tasks_of(suite: str) -> list[int]:
            return list(s.tasks)

    run = run_stages(s, tasks_of)
    res = write_report(s, run)
    print(f"[study] report: {s.out}/report.md, numbers: {s.out}/study.json")
    for suite, tasks in res["tasks_without_demonstrations"].items():
        print(f"[study] {suite}: no demonstration for tasks {tasks}")
    problems = []
    if res["errors"]:
        problems.append(f"{res['errors']} closed-loop episode(s) ended in an error (not counted in any rate)")
    if res["failed"]:
        problems.append(f"{len(res['failed'])} stage(s) failed: {'; '.join(res['failed'])}")
    if problems:
        print(f"[study] ERROR: {'; '.join(problems)}; run the same command again to retry them.")
        return 1
    return 0
