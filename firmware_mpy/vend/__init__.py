# Vending machine firmware. VERSION is reported in presence and health messages.
VERSION = "0.1.0"
