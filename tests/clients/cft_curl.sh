# The Cool Farm Tool seed's curl lines (without the "$ " prompts). The page they come from lost the
# URL, leaving an empty string: tests/test_clients.py puts the demo's two-key endpoint there and
# replaces the two keys.
curl -i ""
curl -I \
    -H "X-Api-Authorization: kS9UayP3WU7cLQHi5XUW9GylaToRcUtCuY12MPCyyb0" \
    -H "X-Api-App-Authorization: OWyHsuoAk74FLDGIGqrgWVBsffG32ndAhsyO1jeuU34" \
    ""
