"""Rollout videos: at most the requested number per task, whatever the sharding."""

from world_modality.evaluate.closed_loop import video_jobs


def test_at_most_the_requested_videos_per_task_across_shards():
    jobs = [(t, k) for t in range(3) for k in range(5)]
    for video in (0, 1, 2, 7):
        for n in (1, 2, 3):
            filmed = set().union(*(video_jobs(jobs[i::n], video) for i in range(n)))
            for t in range(3):
                assert len({k for tt, k in filmed if tt == t}) == min(video, 5)
