"""The central side: what runs beside the fleet broker, not on a box.

model.py   the fleet as the broker shows it (pure: fed (topic, payload, retained) messages)
console.py `boxtel fleet`'s subscription and its table / JSON rendering
broker.py  the broker a central command talks to (`--broker URL`), and the console's buffered paho client
sim.py     `boxtel simulate-fleet`: thousands of simulated boxes in one process

Nothing here is imported by the box daemon (`boxtel run`).
"""
