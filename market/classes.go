package market

import "github.com/shopspring/decimal"

// DefaultClasses are the resource classes the broker knows without
// configuration. Typical prices follow shared/market-reference.md.
func DefaultClasses() []ResourceClass {
	d := decimal.RequireFromString
	return []ResourceClass{
		{ID: "gpu.h100-80g", Name: "NVIDIA H100 80GB", Unit: UnitGPUHour, Typical: d("21.00")},
		{ID: "gpu.a800-80g", Name: "NVIDIA A800 80GB", Unit: UnitGPUHour, Typical: d("10.00")},
		{ID: "gpu.h20-96g", Name: "NVIDIA H20 96GB", Unit: UnitGPUHour, Typical: d("16.00")},
		{ID: "gpu.910b-64g", Name: "Ascend 910B 64GB", Unit: UnitGPUHour, Domestic: true, Typical: d("13.00")},
		{ID: "gpu.l40s-48g", Name: "NVIDIA L40S 48GB", Unit: UnitGPUHour, Typical: d("10.50")},
		{ID: "gpu.rtx4090-24g", Name: "NVIDIA RTX 4090 24GB", Unit: UnitGPUHour, Typical: d("2.50")},
		{ID: "cpu.standard", Name: "Standard vCPU", Unit: UnitVCPUHour, Typical: d("0.24")},
		{ID: "cpu.highmem", Name: "High-memory vCPU", Unit: UnitVCPUHour, Typical: d("0.35")},
	}
}

// DefaultRegions are the regions the broker knows without configuration.
func DefaultRegions() []Region {
	return []Region{
		{ID: "cn-north", Name: "North China (Beijing)"},
		{ID: "cn-east", Name: "East China (Shanghai)"},
		{ID: "cn-south", Name: "South China (Shenzhen)"},
		{ID: "cn-west", Name: "West China (Chengdu)"},
	}
}

// Catalog is the configured set of resource classes and regions.
type Catalog struct {
	Classes []ResourceClass
	Regions []Region
	classes map[string]ResourceClass
	regions map[string]Region
}

// NewCatalog indexes classes and regions.
func NewCatalog(classes []ResourceClass, regions []Region) *Catalog {
	c := &Catalog{Classes: classes, Regions: regions, classes: map[string]ResourceClass{}, regions: map[string]Region{}}
	for _, rc := range classes {
		c.classes[rc.ID] = rc
	}
	for _, r := range regions {
		c.regions[r.ID] = r
	}
	return c
}

// DefaultCatalog is NewCatalog(DefaultClasses(), DefaultRegions()).
func DefaultCatalog() *Catalog { return NewCatalog(DefaultClasses(), DefaultRegions()) }

// Class returns the resource class with id.
func (c *Catalog) Class(id string) (ResourceClass, bool) { rc, ok := c.classes[id]; return rc, ok }

// Region returns the region with id.
func (c *Catalog) Region(id string) (Region, bool) { r, ok := c.regions[id]; return r, ok }

// Markets lists every (class, region) pair.
func (c *Catalog) Markets() []MarketKey {
	out := make([]MarketKey, 0, len(c.Classes)*len(c.Regions))
	for _, rc := range c.Classes {
		for _, r := range c.Regions {
			out = append(out, MarketKey{Class: rc.ID, Region: r.ID})
		}
	}
	return out
}
