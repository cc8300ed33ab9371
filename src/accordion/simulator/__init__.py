"""What-if simulation: replay a real job log under elastic scaling policies (`accordion simulate`).

Nothing here touches a live cluster: the only code shared with the controller is the policy interface
(`Snapshot -> Plan`) and the `accordion` policy itself.
"""
