import { layerMemory } from "../src/store/memory.ts"
import { storeContract } from "../src/testing/storeContract.ts"

storeContract("memory", layerMemory)
