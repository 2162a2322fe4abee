"""Clients, one per wire semantics (private): continuous receiver and Modbus master."""
