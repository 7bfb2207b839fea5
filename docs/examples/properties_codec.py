"""serializedProperties, vRO's `name=value` lines, and the codec's rules."""

import adapter


def main() -> dict[str, str]:
    text = "host = vm-42\r\nurl=https://example.com/?a=1&b=2\n\nnote=\n"
    properties = adapter.parse_properties(text)
    # Names are stripped; values are kept exactly as written (the space after "=", any "=");
    # blank lines are skipped.
    assert properties == {"host": " vm-42", "url": "https://example.com/?a=1&b=2", "note": ""}
    assert adapter.parse_properties(adapter.serialize_properties(properties)) == properties

    for bad in ("no equals sign", "=value", "a=1\na=2"):
        try:
            adapter.parse_properties(bad)
        except adapter.InvalidProperties as exc:
            print(exc)  # e.g. invalid serializedProperties: line 2: property 'a' given twice ...
        else:
            raise AssertionError(bad)
    for forged in ({"note": "hi\napproved=true"}, {"note=approved": "true"}):
        try:
            adapter.serialize_properties(forged)
        except adapter.InvalidProperties as exc:
            print(exc)  # refused at every edge: no sender can forge a line of `key=value` output
        else:
            raise AssertionError(forged)
    return properties


if __name__ == "__main__":
    main()
