"""Ready-made simulated workspaces: the demo's, and bulk ones for benchmarks."""

from __future__ import annotations

from exporter.sim.world import DEFAULT_API_KEY, World


def demo_world(api_key: str = DEFAULT_API_KEY, seed: int = 7) -> World:
    """Three workflows whose runs keep changing for the first minutes of a demo."""
    world = World(api_key=api_key, seed=seed)
    blog = world.add_workflow("blog-writer")
    seo = world.add_workflow("seo-meta-descriptions")
    leads = world.add_workflow("lead-enrichment")
    done = [("NEW", 2), ("PROCESSING", 40), ("COMPLETE", None)]
    world.add_run(blog, done, age_seconds=3600, credits=42)
    world.add_run(blog, done, age_seconds=7200, credits=38, credits_as_string=True, millis=False)
    world.add_run(
        blog, [("NEW", 5), ("WAITING", 20), ("PROCESSING", 60), ("COMPLETE", None)], credits=51
    )
    world.add_run(
        blog,
        [("PROCESSING", 150), ("RETRYING", 30), ("PROCESSING", 60), ("COMPLETE", None)],
        age_seconds=30,
        credits=77,
        credits_as_string=True,
    )
    world.add_run(
        blog, [("NEW", 10), ("PROCESSING", 240), ("COMPLETE", None)], credits=120, metadata=None
    )
    world.add_run(seo, done, age_seconds=600, credits=9, metadata="absent")
    world.add_run(
        seo,
        [
            ("PROCESSING", 45),
            ("RETRYING", 30),
            ("PROCESSING", 20),
            ("RETRYING", 20),
            ("FAILED", None),
        ],
        credits=14,
    )
    world.add_run(
        seo,
        [("WAITING", 7200), ("PROCESSING", 60), ("COMPLETE", None)],
        age_seconds=1800,
        credits=3,
    )  # stuck: trips a "stuck run" alert
    world.add_run(
        seo,
        [("NEW", 3), ("PROCESSING", 90), ("COMPLETE", None)],
        credits=12,
        credits_as_string=True,
        millis=False,
    )
    world.add_run(
        leads, [("NEW", 1), ("PROCESSING", 20), ("FAILED", None)], age_seconds=900, credits=5
    )
    world.add_run(
        leads,
        [("PROCESSING", 300), ("COMPLETE", None)],
        age_seconds=60,
        credits=2200,
        credits_as_string=True,
    )
    world.add_run(
        leads, [("NEW", 30), ("WAITING", 30), ("PROCESSING", 120), ("COMPLETE", None)], credits=64
    )
    return world


def bulk_world(
    workflows: int,
    runs_per_workflow: int,
    active_fraction: float,
    api_key: str = DEFAULT_API_KEY,
    seed: int = 1,
) -> World:
    """Many runs for benchmarks: a share stays PROCESSING forever, the rest are done."""
    world = World(api_key=api_key, seed=seed)
    active_every = round(1 / active_fraction) if active_fraction > 0 else 0
    for w in range(workflows):
        workflow_id = world.add_workflow(f"bulk-{w}")
        for i in range(runs_per_workflow):
            if active_every and i % active_every == 0:
                steps: list[tuple[str, float | None]] = [("PROCESSING", None)]
            else:
                steps = [("PROCESSING", 1), ("COMPLETE", None)]
            world.add_run(
                workflow_id,
                steps,
                age_seconds=3600 - i,
                credits=i % 50,
                credits_as_string=bool(i % 2),
                millis=bool(i % 3),
            )
    return world
