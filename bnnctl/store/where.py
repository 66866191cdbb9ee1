from bnnctl.where import check_where, select  # TEMP shim

__all__ = ["check_where", "select"]
