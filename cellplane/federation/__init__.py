"""Links between cells: the CellLink protocol, routing, reports and link security."""
