"""Pure domain logic of tierembed: documents, validation, scoring, routing, budgets, costs.

Imports no Beam, Prefect, vendor SDK or torch (a test checks it).
"""

__version__ = "0.1.0"
