"""The fleet platform (DESIGN.md section 9): what an operator runs to verify, enrol, issue, rotate,
revoke and audit the devices the factory made.

Scope: vertical slices, one sub-package each (devices, enrollment, revocation, rotation,
firmware, audit), each api -> service -> repository, with the models and migrations they share;
the enrollment slice's quote verifier is pure logic without I/O. Import rule (import-linter):
nothing under ``iotid.fleet`` imports ``iotid.se``, ``iotid.host`` or ``iotid.transport``; the
fleet meets the card only through the wire contract in ``iotid.spec`` and the glue in
``iotid.crypto``.

Not covered here: the device side (``iotid.device``, ``iotid.host``), the factory
(``iotid.factory``).
"""
