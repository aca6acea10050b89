"""Tests of the simulated patients and devices."""
