"""The DiGA reference client: how a DiGA pairs with a Device Data Recorder and reads its data.

A working, readable example of the DiGA side of HDDT, in the order a DiGA developer meets it
(docs/diga-client.md maps each step to its page of the specification):

* :mod:`bridge.diga.connection`: where the Device Data Recorder is and who the DiGA is
  (the ``connection.json`` the demo writes);
* :mod:`bridge.diga.pkce`: the PKCE verifier and S256 challenge (RFC 7636);
* :mod:`bridge.diga.client`: discovery, pushed authorization request, the patient's consent,
  token exchange, refresh with rotation, unpairing, FHIR reads (all over mutual TLS);
* :mod:`bridge.diga.forms`: reading the portal's plain HTML forms (sandbox pairing without
  a browser);
* :mod:`bridge.diga.polling`: the polling pattern of "Retrieving Data" with cursors that
  deliver every reading exactly once;
* :mod:`bridge.diga.state`: one JSON state file per pairing (tokens and cursors);
* :mod:`bridge.diga.render`: tables, terminal sparklines and SVG charts;
* :mod:`bridge.diga.cli`: ``hddt-bridge diga pair|refresh|unpair|fetch|summary|show``.
"""
