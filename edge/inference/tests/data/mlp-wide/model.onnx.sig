{
  "algorithm": "ed25519",
  "public_key": "79b5562e8fe654f94078b112e8a98ba7901f853ae695bed7e0e3910bad049664",
  "signature": "ddb612cbf2e3d9359befc37710a78384fc74da94eaf58a670caebb5ede116089cd97c09dafea64f1e628108ffcc96208c8d6a680fbabca0c7b643acc935c5f05"
}
