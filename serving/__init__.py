"""The live side: champion loader, signals, sizing, risk, exits, brokers, journal, API."""
