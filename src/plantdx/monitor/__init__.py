"""Monitoring beside the service: drift of the prediction log (written by ``plantdx.serve``) against the served
bundle's reference profile (``plantdx.profile``, made at export), as Evidently reports (``drift``)."""
