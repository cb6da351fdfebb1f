# ari-coach without its password: the assertion must fail the evaluation.
{ services.callCoach.enable = true; }
