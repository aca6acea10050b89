"""Virtual BLE peripherals (glucose meter, CGM sensor, insulin pump) on bumble.

Each runs on an in-process link for tests or on any bumble HCI transport (a virtual
controller in another process, or a real dongle); see :mod:`simulators.ble.common`.
"""
