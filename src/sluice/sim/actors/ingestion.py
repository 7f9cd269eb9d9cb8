"""The exchange's ingestion of the treasury's stream: sometimes only a few transactions, always
in small batches (a batch size drawn each time it starts), with a crash point after each batch."""

from __future__ import annotations

from sluice.services.ingestion import Ingestion, IngestionProgress, IngestionSettings
from sluice.sim.actors.actor import Action, Actor
from sluice.sim.faults import crash_point
from sluice.sim.state import SimulationState

PROCESS = "ingestion"


def ingestion(sim: SimulationState) -> Ingestion:
    """The running ingestion, started from the cursor in the DB if none runs."""

    def start() -> Ingestion:
        settings = IngestionSettings(
            batch_size_max=sim.rng.randint(1, 20),
            read_attempts_max=5,
            retry_delay_s=0.0,
            retry_delay_max_s=0.0,
        )

        def after_batch(_progress: IngestionProgress) -> None:
            crash_point(sim, "after_batch")

        return Ingestion(
            sim.sandbox.database.uow,
            sim.sandbox.ledger_client(),
            sim.sandbox.treasury,
            connection=sim.sandbox.connection,
            settings=settings,
            sleep=lambda _s: None,
            on_batch=after_batch,
            # The sandbox's registry, risk rules off, as for the customers' requests.
            compliance=sim.sandbox.compliance,
        )

    return sim.process(PROCESS, start)


def ingest(sim: SimulationState) -> None:
    if sim.rng.random() < 0.3:
        ingestion(sim).run(max_transactions=sim.rng.randint(1, 6))
    else:
        ingestion(sim).run()


def ingest_everything(sim: SimulationState) -> None:
    ingestion(sim).run()


ACTOR = Actor("ingestion", (Action("ingest", 14, ingest),))
