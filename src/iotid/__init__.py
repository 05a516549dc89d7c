"""iotid: hardware-backed identity for IoT fleets.

Package map (see DESIGN.md section 2): ``spec`` (wire contract), ``apdu`` (ISO 7816-4),
``crypto`` (primitives glue over pyca/cryptography), ``scp03`` (GlobalPlatform SCP03, shared by
card and host), ``se`` (the secure element emulator), ``transport`` (how APDUs travel),
``host`` (the shim the device uses), ``cli`` (thin command line).
"""

__version__ = "0.1.0"
