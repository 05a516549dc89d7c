"""The wire contract, defined once: ISO 7816-4 and GlobalPlatform vocabulary, and one module per
applet. The card (``iotid.se``) and the host (``iotid.host``) both import from here; neither spells
a bare instruction byte, tag or status word.

Not in scope: encoding and parsing (``iotid.apdu``), cryptography (``iotid.crypto``,
``iotid.scp03``).
"""
