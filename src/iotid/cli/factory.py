"""``iotid factory``: the operator's manufacturing site.

Scope: mounting the factory's sub-commands: ``ceremony`` (init, verify), ``batch`` (create),
``personalise`` (the line) and ``firmware`` (sign). Each lives in its own ``cli.factory_*``
module; the work is in ``iotid.factory``.
"""

from __future__ import annotations

import typer

from iotid.cli.factory_batch import batch_app, personalise
from iotid.cli.factory_ceremony import ceremony_app
from iotid.cli.factory_firmware import firmware_app

factory_app = typer.Typer(
    no_args_is_help=True,
    help="The factory: key ceremony, batches, personalisation line, firmware signing.",
)
factory_app.add_typer(ceremony_app, name="ceremony")
factory_app.add_typer(batch_app, name="batch")
factory_app.add_typer(firmware_app, name="firmware")
factory_app.command("personalise")(personalise)
