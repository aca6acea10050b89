"""Device drivers: GATT profile clients and serial meter drivers, behind one interface."""
