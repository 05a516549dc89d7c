"""The factory: key ceremony, CA hierarchy, key stores, personalisation line, firmware signing.

Today: only ``devpki``, a development stand-in that says so loudly. The ceremony with its M-of-N
quorum, HSM-backed keys and the personalisation line arrive with the factory issue.
"""
